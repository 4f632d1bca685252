"""
Graceful stop with a real twistd process: on SIGTERM (or SIGINT, as Ctrl-C
sends) it stops accepting at once, lets an upload in flight finish within
C{--shutdown-timeout} and exits 0; an upload still going at the deadline is
cut and leaves nothing behind (no row, no temporary file); the embedded
PostgreSQL stops with it.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import psutil  # type: ignore[import-untyped]
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from tests.integration.helpers import FORM_HEADERS, eventually, form, jsonOf, newUUID, sleep
from tests.integration.servers import Server, startServer

TIMEOUT = 30
PIECE = 64 * 1024


@implementer(IBodyProducer)
class GatedBody:
    """
    A body sent in pieces up to C{gateAt} bytes, then held until L{open}:
    the test decides when the upload may finish (or never lets it).
    """

    def __init__(self, data: bytes, gateAt: int) -> None:
        self.data = data
        self.gateAt = gateAt
        self.length = len(data)
        self.sent = 0
        self._gate: Deferred[None] = Deferred()
        self._stopped = False

    def open(self) -> None:
        self._gate.callback(None)

    def startProducing(self, consumer) -> Deferred[None]:
        return Deferred.fromCoroutine(self._produce(consumer))

    async def _produce(self, consumer) -> None:
        while self.sent < self.length and not self._stopped:
            if self.sent == self.gateAt and not self._gate.called:
                await self._gate
                continue
            limit = self.length if self._gate.called else self.gateAt
            end = min(self.sent + PIECE, limit)
            consumer.write(self.data[self.sent : end])
            self.sent = end
            await sleep(0.005)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self._stopped = True
        if not self._gate.called:
            self._gate.callback(None)


def refused(server: Server) -> None:
    """New connections are refused: the server no longer listens."""
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    except ConnectionRefusedError:
        return
    raise AssertionError("still accepting connections")


def postgresOf(dataDir: str) -> list[psutil.Process]:
    """The PostgreSQL processes running on the data directory's cluster."""
    pgdata = os.path.join(dataDir, "postgres")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(pgdata in arg for arg in process.info["cmdline"] or ()):
            found.append(process)
    return found


def temporaryFiles(server: Server) -> list[str]:
    return [f for f in server.files() if ".tmp-" in os.path.basename(f)]


async def exited(server: Server) -> int:
    def gone() -> None:
        assert server.process.poll() is not None

    await eventually(gone, timeout=TIMEOUT)
    return server.process.returncode


def gatedUpload(server: Server, uuid: str, size: int, gateAt: int) -> tuple[GatedBody, Deferred]:
    body = GatedBody(form(("uuid", uuid), ("size", str(size)), ("blob", os.urandom(size))), gateAt)
    d = treq.post(
        f"{server.url}/data",
        data=body,
        headers=FORM_HEADERS,
        auth=server.auth,
        timeout=TIMEOUT,
        persistent=False,
    )
    return body, d


@contextmanager
def interruptible() -> Iterator[None]:
    """
    Servers started here get SIGINT's default disposition, as a program
    started from a terminal, even if these tests run with it ignored (a
    child keeps an ignored signal ignored, and a server keeps it so).
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest_twisted.ensureDeferred
async def test_uploadFinishesWithinTheTimeout(tmp_path, stop: signal.Signals) -> None:
    """
    SIGTERM, or SIGINT (Ctrl-C), in the middle of an upload: new
    connections are refused at once, the upload goes on to its 201, then
    the process exits 0 (not killed by the signal) with its PostgreSQL
    stopped.
    """
    dataDir = str(tmp_path / "data")
    with interruptible():
        server = startServer(dataDir, "--shutdown-timeout", "20")
    try:
        uuid = newUUID()
        body, d = gatedUpload(server, uuid, 2 * 1024 * 1024, gateAt=1024 * 1024)
        answered: list[object] = []

        def answer(result: object) -> object:
            answered.append(result)
            return result

        d.addBoth(answer)

        def claimed() -> None:
            assert server.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == [
                ("pending",)
            ]
            assert body.sent >= body.gateAt

        await eventually(claimed)
        server.process.send_signal(stop)

        await eventually(lambda: refused(server))
        assert not answered and server.process.poll() is None
        body.open()
        r = await d
        assert r.code == 201, await treq.text_content(r)
        assert (await jsonOf(r))["uuid"] == uuid
        assert await exited(server) == 0
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    assert f"{stop.name}: stopping gracefully" in log
    assert "cut" not in log
    assert postgresOf(dataDir) == []

    again = startServer(dataDir)
    try:
        assert again.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == [("ready",)]
    finally:
        again.stop()


@pytest_twisted.ensureDeferred
async def test_uploadCutAtTheDeadlineLeavesNothing(tmp_path) -> None:
    """
    An upload still going when the shutdown timeout expires is cut; its
    claim and its temporary file go before the database closes, so that the
    next start has nothing to sweep.  A second SIGTERM while draining
    changes nothing.
    """
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--shutdown-timeout", "1")
    try:
        before = server.files()
        uuid = newUUID()
        body, d = gatedUpload(server, uuid, 8 * 1024 * 1024, gateAt=1024 * 1024)
        failures: list[Failure] = []
        d.addErrback(failures.append)

        def writing() -> None:
            assert server.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == [
                ("pending",)
            ]
            assert temporaryFiles(server)

        await eventually(writing)
        server.process.send_signal(signal.SIGTERM)
        await eventually(lambda: refused(server))
        server.process.send_signal(signal.SIGTERM)
        assert await exited(server) == 0

        def cut() -> None:
            assert failures

        await eventually(cut)
        assert temporaryFiles(server) == []
        assert server.files() == before
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    assert "cut 1 connection(s) still busy after 1.0s" in log
    assert "Traceback" not in log and "had not finished" not in log
    assert postgresOf(dataDir) == []

    again = startServer(dataDir)
    try:
        assert again.sql("SELECT count(*) FROM resource WHERE uuid = %s", (uuid,)) == [(0,)]
        assert again.files() == before
        assert "swept" not in again.log()
    finally:
        again.stop()


@pytest_twisted.ensureDeferred
async def test_idleConnectionsDoNotDelayTheStop(tmp_path) -> None:
    """A client keeping an idle connection open does not hold the stop until the deadline."""
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--shutdown-timeout", "60")
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status": "ok"}\n'):
            chunk = idle.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK")
        started = reactor.seconds()
        server.process.send_signal(signal.SIGTERM)
        assert await exited(server) == 0
        assert reactor.seconds() - started < 20
        assert idle.recv(65536) == b""
    finally:
        idle.close()
        server.stop(signal.SIGKILL)
    assert postgresOf(dataDir) == []
