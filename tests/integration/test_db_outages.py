"""
The database's outages, caused for real under a real twistd: an external
PostgreSQL restarted under load, its sessions terminated one by one, a
frozen link (a proxy that stops forwarding), and the embedded PostgreSQL
killed with SIGKILL.  Meanwhile requests get a prompt 503 whose JSON names
the database and nothing of the driver; afterwards every route works again
without restarting the service, within seconds (the recovery times are
printed).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg2
import pytest
from attrs import frozen

from morpheo.metadata._postgres import HEARING_CHECK
from tests.integration.helpers import BOUNDARY, form
from tests.integration.servers import ExternalPostgres, Server, startServer, waitUntil

#: What a 503 must never show: the driver's words, addresses, paths.
DRIVER_WORDS = ("psycopg", "connection", "server closed", "socket", "fatal", "traceback",
                "127.0.0.1", ".s.pgsql", "/")  # fmt: skip
#: How soon every route must work again once PostgreSQL is back.
RECOVERY = 5.0
#: The service's sessions: its pool's four, and the one that hears the changes.
SESSIONS = 5


@frozen
class Outcome:
    """One request: when it started and ended, its status (None: no answer) and body."""

    method: str
    path: str
    start: float
    end: float
    status: int | None
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def authHeader(server: Server) -> str:
    token = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    return f"Authorization: Basic {token}"


def call(server: Server, method: str, path: str, body: bytes = b"", timeout: float = 30) -> Outcome:
    """A request on a connection of its own, whatever happens to it."""
    name, _, value = authHeader(server).partition(": ")
    headers = {name: value}
    if body:
        headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return Outcome(method, path, start, time.monotonic(), response.status, data)
    except (OSError, http.client.HTTPException) as e:
        return Outcome(method, path, start, time.monotonic(), None, repr(e).encode())
    finally:
        conn.close()


def uploadOf(server: Server, size: int = 2000) -> Outcome:
    data = os.urandom(size)
    return call(server, "POST", "/data", form(("size", str(size)), ("blob", data)))


def uploaded(server: Server) -> str:
    """The uuid of a new data object."""
    outcome = uploadOf(server)
    assert outcome.status == 201, outcome
    return str(json.loads(outcome.body)["uuid"])


def assertUnavailable(outcome: Outcome, within: float) -> str:
    """A 503 in C{within} seconds, a JSON error naming the database and nothing of the driver."""
    assert outcome.status == 503, outcome
    assert outcome.end - outcome.start < within, outcome
    body = json.loads(outcome.body)
    assert set(body) == {"error"}, body
    error: str = body["error"]
    assert "metadata database" in error, error
    for word in DRIVER_WORDS:
        assert word not in error.lower(), error
    return error


class Load:
    """
    Requests in a loop on a few threads, each in turn: an upload, a list,
    an object's metadata and its blob; every outcome kept.
    """

    def __init__(self, server: Server, known: str, threads: int = 4) -> None:
        self.server = server
        self.known = known
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        server, known = self.server, self.known
        while not self._stop.is_set():
            for outcome in (
                lambda: uploadOf(server),
                lambda: call(server, "GET", "/data?limit=5"),
                lambda: call(server, "GET", f"/data/{known}"),
                lambda: call(server, "GET", f"/data/{known}/blob"),
            ):
                self.outcomes.append(outcome())

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.start < end]


def recoveryAfter(outcomes: list[Outcome], back: float) -> float:
    """From C{back}, how long until every request started succeeds."""
    failed = [o.start for o in outcomes if o.start >= back and not o.ok]
    return max(failed, default=back) - back


def assertQuietLog(server: Server) -> None:
    """The log says what failed in a few lines: no traceback, no line per request."""
    log = server.log()
    assert "Traceback" not in log, log
    assert "Unhandled Error" not in log, log
    said = [line for line in log.splitlines() if "[morpheo.metadata._postgres" in line]
    assert len(said) <= 12, "\n".join(said)


@pytest.fixture
def postgres(tmp_path) -> Iterator[ExternalPostgres]:
    with ExternalPostgres(str(tmp_path / "pg")) as pg:
        yield pg


def serverOn(postgres: ExternalPostgres, tmp_path, *args: str) -> Server:
    return startServer(
        str(tmp_path / "data"), *postgres.serverArgs(), *args, env=postgres.serverEnv()
    )


def test_a_restart_under_load_is_503_then_recovered(postgres, tmp_path) -> None:
    """
    Uploads and reads run through a restart of PostgreSQL: while it is down
    they get prompt 503s, never a 500 nor a closed connection; within
    seconds of its return every one succeeds again.
    """
    server = serverOn(postgres, tmp_path)
    try:
        known = uploaded(server)
        with Load(server, known) as load:
            time.sleep(1.0)
            down = time.monotonic()
            postgres.stop()
            time.sleep(1.5)
            postgres.start()
            back = time.monotonic()
            time.sleep(RECOVERY + 1.0)
        before = [o for o in load.outcomes if o.end < down]
        assert before and all(o.ok for o in before), [o for o in before if not o.ok]
        failed = [o for o in load.outcomes if not o.ok]
        assert failed, "no request saw the outage"
        for outcome in failed:
            assertUnavailable(outcome, within=1.0)
        recovery = recoveryAfter(load.outcomes, back)
        first, last = min(o.start for o in failed), max(o.end for o in failed)
        print(
            f"\nrestart: PostgreSQL down {back - down:.2f}s (pg_ctl stop to start done);"
            f" {len(failed)} requests answered 503 from {first - down:+.2f}s to"
            f" {last - back:+.2f}s after it was back; all succeed {recovery:.2f}s after"
        )
        assert recovery < RECOVERY
        assert all(o.ok for o in load.between(back + RECOVERY))
        assert load.between(back + RECOVERY), "no request after the recovery"
        assert call(server, "GET", f"/data/{known}").status == 200
        assert len(postgres.backends()) <= SESSIONS
        assertQuietLog(server)
        assert "reconnected to the metadata database" in server.log()
    finally:
        assert server.stop() == 0


def test_the_changes_are_heard_again_after_a_restart(postgres, tmp_path) -> None:
    """
    What the service kept is forgotten when its link to PostgreSQL breaks,
    and the changes made after PostgreSQL's return are heard: a row
    deleted by hand is a 404 within a second, not a record kept for ten.
    """
    server = serverOn(postgres, tmp_path)
    try:
        known = uploaded(server)
        for _ in range(3):
            assert call(server, "GET", f"/data/{known}").status == 200
        postgres.restart()
        waitUntil(lambda: call(server, "GET", f"/data/{known}").ok, RECOVERY, "recovery")
        time.sleep(HEARING_CHECK + 0.5)  # the link that hears the changes is back too
        for _ in range(3):
            assert call(server, "GET", f"/data/{known}").status == 200
        with psycopg2.connect(
            host=postgres.host, port=postgres.port, user="postgres", dbname=postgres.dbName
        ) as db, db.cursor() as cur:  # fmt: skip
            cur.execute("DELETE FROM resource WHERE uuid = %s", (known,))
        waitUntil(
            lambda: call(server, "GET", f"/data/{known}").status == 404, 1.0, "the deletion seen"
        )
        assertQuietLog(server)
    finally:
        assert server.stop() == 0


def test_terminated_sessions_are_replaced(postgres, tmp_path) -> None:
    """
    Every session of the service killed with pg_terminate_backend, under
    load: at most the requests in flight fail (with a 503), and every
    request after succeeds, on new sessions.
    """
    server = serverOn(postgres, tmp_path)
    try:
        known = uploaded(server)
        for _ in range(8):  # every pooled connection used once
            assert call(server, "GET", f"/data/{known}").status == 200
        old = postgres.backends()
        assert len(old) == SESSIONS, old
        with Load(server, known) as load:
            time.sleep(0.5)
            cut = time.monotonic()
            postgres.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (postgres.user,),
            )
            waitUntil(lambda: not set(old) & set(postgres.backends()), 10, "the sessions gone")
            gone = time.monotonic()
            time.sleep(1.0)
        failed = [o for o in load.outcomes if not o.ok]
        for outcome in failed:
            assertUnavailable(outcome, within=1.0)
            assert cut - 1.0 < outcome.start < gone, outcome  # in flight at the cut
        assert len(failed) <= 4, failed
        assert all(o.ok for o in load.between(gone))
        for _ in range(20):
            assert call(server, "GET", f"/data/{known}").status == 200
        new = postgres.backends()
        assert len(new) == SESSIONS and not set(new) & set(old), (old, new)
        print(f"\nterminated sessions: {len(failed)} requests in flight answered 503")
        assertQuietLog(server)
    finally:
        assert server.stop() == 0


class FreezingProxy:
    """
    A TCP proxy from 127.0.0.1 to PostgreSQL's Unix socket that can stop
    forwarding (both ways; what arrives meanwhile is held, connections are
    still accepted) and resume: a frozen link, as a dead route makes one.
    """

    def __init__(self, socketPath: str) -> None:
        self.socketPath = socketPath
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.socketPath)
            except OSError:
                continue
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                self._flowing.wait()
                if not data or self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_frozen_link_is_503_within_the_bound_then_recovered(postgres, tmp_path) -> None:
    """
    The link to PostgreSQL freezes (nothing comes back, nothing is refused):
    requests get a 503 within --db-timeout, not a hang, and their
    connections are replaced; once the link flows again, so do requests.
    """
    proxy = FreezingProxy(os.path.join(postgres.host, f".s.PGSQL.{postgres.port}"))
    bound = 1.0
    args = postgres.serverArgs("127.0.0.1", proxy.port)
    server = startServer(
        str(tmp_path / "data"), *args, "--db-timeout", str(bound), env=postgres.serverEnv()
    )
    try:
        known = uploaded(server)
        proxy.freeze()
        frozen = time.monotonic()
        # A client that gives up on its frozen request: the service lets
        # the query run out its bound, rather than cancel it by a blocking
        # call over the frozen link.
        impatient = socket.create_connection(("127.0.0.1", server.port))
        head = f"GET /data/{known} HTTP/1.1\r\nHost: x\r\n{authHeader(server)}\r\n\r\n"
        impatient.sendall(head.encode())
        time.sleep(0.3)
        impatient.close()
        health = call(server, "GET", "/health", timeout=5)
        assert health.status == 200 and health.end - health.start < 0.5, health
        outcomes: list[Outcome] = []

        def reader() -> None:
            outcomes.append(call(server, "GET", f"/data/{known}"))

        # More requests than connections: the ones waiting for one are bounded too.
        threads = [threading.Thread(target=reader) for _ in range(6)]
        for t in threads:
            t.start()
        outcomes.append(uploadOf(server))
        for t in threads:
            t.join(30)
        for _ in range(3):
            outcomes.append(call(server, "GET", "/data"))
        ready = call(server, "GET", "/ready")
        assert ready.status == 503 and ready.end - ready.start < bound + 0.5, ready
        assert json.loads(ready.body)["database"] == "unavailable"
        assert call(server, "GET", "/health").status == 200
        assert len(outcomes) == 10
        errors = {assertUnavailable(o, within=bound + 0.5) for o in outcomes}
        print(f"\nfrozen link: {len(outcomes)} requests answered 503: {sorted(errors)}")
        proxy.thaw()
        thawed = time.monotonic()
        waitUntil(lambda: call(server, "GET", f"/data/{known}").ok, RECOVERY, "recovery")
        recovery = time.monotonic() - thawed
        print(f"frozen link: frozen {thawed - frozen:.1f}s; recovered {recovery:.2f}s after")
        for _ in range(10):
            assert call(server, "GET", f"/data/{known}").ok
        assert uploadOf(server).status == 201
        # The frozen connections were dropped, not kept beside their replacements.
        waitUntil(lambda: len(postgres.backends()) == SESSIONS, 10, "the service's sessions")
        assertQuietLog(server)
    finally:
        proxy.thaw()
        assert server.stop() == 0
        proxy.close()


def postmasterOf(server: Server) -> int:
    with open(os.path.join(server.dataDir, "postgres", "postmaster.pid")) as f:
        return int(f.readline())


def postgresOf(server: Server) -> list[Any]:
    pgdata = os.path.join(server.dataDir, "postgres")
    return [
        p
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE
        and any(pgdata in arg for arg in p.info["cmdline"] or ())
    ]


def test_the_embedded_postgres_killed_is_started_again(tmp_path) -> None:
    """
    The embedded PostgreSQL's postmaster is killed (SIGKILL): the service
    notices, starts it again and says so; requests get 503s meanwhile and
    work again after, without a restart of the service.  A graceful stop
    then stops it for good.
    """
    server = startServer(str(tmp_path / "data"))
    try:
        known = uploaded(server)
        dead = postmasterOf(server)
        os.kill(dead, signal.SIGKILL)
        killed = time.monotonic()
        died = f"the embedded PostgreSQL (pid {dead}) died; starting it again"
        seen: list[Outcome] = []
        noticed = False
        while time.monotonic() < killed + 20:
            seen.append(call(server, "GET", f"/data/{known}"))
            # Its sessions may outlive it a moment: served until noticed.
            noticed = noticed or died in server.log()
            if noticed and seen[-1].ok:
                break
            time.sleep(0.1)
        assert noticed and seen[-1].ok, (seen[-1], server.log())
        recovery = seen[-1].start - killed
        failed = [o for o in seen if not o.ok]
        print(f"\nembedded PostgreSQL killed: back {recovery:.2f}s after ({len(failed)} 503s)")
        for outcome in failed:
            assertUnavailable(outcome, within=1.0)
        assert "the embedded PostgreSQL is running again" in server.log()
        assert postmasterOf(server) != dead
        assert uploadOf(server).status == 201
        assert call(server, "GET", "/ready").status == 200
        assertQuietLog(server)
    finally:
        assert server.stop() == 0
    assert server.log().count("died; starting it again") == 1
    assert postgresOf(server) == []


def test_a_graceful_stop_with_its_postgres_dead_neither_restarts_nor_waits_for_it(
    tmp_path,
) -> None:
    """
    SIGTERM right after the embedded PostgreSQL died: the service stops
    promptly with status 0, and leaves no PostgreSQL running behind it.
    """
    server = startServer(str(tmp_path / "data"))
    uploaded(server)
    os.kill(postmasterOf(server), signal.SIGKILL)
    started = time.monotonic()
    assert server.stop(timeout=20) == 0, server.log()
    print(f"\nstopped {time.monotonic() - started:.2f}s after SIGTERM")
    assert "the embedded PostgreSQL is running again" not in server.log()
    waitUntil(lambda: postgresOf(server) == [], 10, "no PostgreSQL left")
