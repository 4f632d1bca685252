"""
C{--workers N} with real twistd processes: two workers serve one port
(both answer, each its own process), a worker killed with SIGKILL is
replaced while the other keeps answering and its upload's uuid is freed by
its replacement, SIGTERM lets an upload in flight finish and leaves no
process behind (PostgreSQL stopped last, status 0), the workers serve TLS,
several C{--listen} endpoints (a UNIX socket among them), an external
PostgreSQL, and the data directory stays one service's.  A worker whose
parent is killed stops by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg2

from tests.integration.helpers import (
    BOUNDARY,
    curl,
    curlOK,
    formHead,
    makePKI,
    newUUID,
    openForm,
    rawRequest,
    rawUpload,
    readResponseHead,
)
from tests.integration.servers import (
    ExternalPostgres,
    SeaweedFS,
    Server,
    startFails,
    startServer,
    waitUntil,
)

SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving")
ACCESS_WORKER = re.compile(r'"GET /health" 200 .* worker=(\d+)')


def workers(server: Server) -> dict[int, int]:
    """The live workers' pids by index, as the log says (the latest of each index)."""
    found: dict[int, int] = {}
    for index, pid in SERVING.findall(server.log()):
        found[int(index)] = int(pid)
    return {i: pid for i, pid in found.items() if psutil.pid_exists(pid)}


def children(server: Server) -> list[psutil.Process]:
    """The server's worker processes (not its PostgreSQL)."""
    return [
        p
        for p in psutil.Process(server.process.pid).children()
        if "morpheo-storage" in " ".join(p.cmdline())
    ]


def postgresOf(dataDir: str) -> list[psutil.Process]:
    pgdata = os.path.join(dataDir, "postgres")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(pgdata in arg for arg in process.info["cmdline"] or ()):
            found.append(process)
    return found


def health(server: Server, *args: str, url: str | None = None) -> None:
    done = curl("-sS", "--fail", *args, (url or server.url) + "/health", timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": "ok"}


def servedBy(server: Server) -> set[int]:
    """The workers the access log says answered /health."""
    return {int(i) for i in ACCESS_WORKER.findall(server.log())}


def untilBothAnswer(server: Server, *args: str, url: str | None = None) -> None:
    """Ask until each of two workers has answered (the kernel picks one per connection)."""
    for _ in range(300):
        health(server, *args, url=url)
        if servedBy(server) == {0, 1}:
            return
    raise AssertionError(f"only workers {servedBy(server)} answered")


def upload(server: Server, path: Path, uuid: str | None = None) -> dict[str, object]:
    fields = ["-F", f"uuid={uuid}"] if uuid else []
    fields += ["-F", f"size={path.stat().st_size}", "-F", f"blob=@{path}"]
    return json.loads(curlOK(server, *fields, f"{server.url}/data"))  # type: ignore[no-any-return]


def serviceSQL(pg: ExternalPostgres, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """A query on the service's database of C{pg}."""
    connection = psycopg2.connect(host=pg.host, port=pg.port, user="postgres", dbname=pg.dbName)
    try:
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute(query, args)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    finally:
        connection.close()


def test_twoWorkersServeOnePort(tmp_path: Path) -> None:
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--workers", "2")
    pids = workers(server)
    try:
        [address] = server.addresses
        assert sorted(pids) == [0, 1]
        assert len(set(pids.values()) | {server.process.pid}) == 3
        assert sorted(p.pid for p in children(server)) == sorted(pids.values())
        assert f"serving with 2 workers (pids {pids[0]}, {pids[1]})" in server.log()
        untilBothAnswer(server)
        # What one worker stored, any worker serves.
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(300_000))
        sha = hashlib.sha256(blob.read_bytes()).hexdigest()
        uuids = [upload(server, blob)["uuid"] for _ in range(6)]
        for uuid in uuids:
            out = subprocess.run(
                ["curl", "-sS", "--fail", "-u", f"{server.user}:{server.password}",
                 f"{server.url}/data/{uuid}/blob"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert hashlib.sha256(out.stdout).hexdigest() == sha
        # One database, started once, by the parent.
        assert server.sql(
            "SELECT count(*) FROM resource WHERE uuid = ANY(%s::uuid[])", (uuids,)
        ) == [(6,)]
        assert server.log().count("starting the embedded PostgreSQL") == 1
        assert server.log().count("applied migrations") == 1
        # The workers' scratch directory of the run, made by the parent:
        # only their metrics are there.
        assert all(name.endswith(".db") for name in os.listdir(os.path.join(dataDir, "run")))
    finally:
        assert server.stop() == 0
    assert not os.path.exists(os.path.join(dataDir, "run"))
    assert not [pid for pid in pids.values() if psutil.pid_exists(pid)]
    assert postgresOf(dataDir) == []


def test_aKilledWorkerIsReplacedAndItsUploadFreed(tmp_path: Path) -> None:
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--workers", "2")
    try:
        uuid = newUUID()
        size = 4 * 1024 * 1024
        s = rawUpload(server, uuid, size, sent=1024 * 1024)
        try:
            waitUntil(
                lambda: bool(
                    server.sql("SELECT claimed_by FROM resource WHERE uuid = %s", (uuid,))
                ),
                30,
                "the upload claimed",
            )
            [(owner,)] = server.sql("SELECT claimed_by FROM resource WHERE uuid = %s", (uuid,))
            index = int(owner.rsplit("/w", 1)[1])
            before = workers(server)
            victim = before[index]
            os.kill(victim, signal.SIGKILL)
            # The other worker answers meanwhile.
            health(server)
            waitUntil(
                lambda: workers(server).get(index, victim) != victim, 30, "a replacement serving"
            )
        finally:
            s.close()
        after = workers(server)
        assert after[1 - index] == before[1 - index]
        assert f"worker {index} (pid {victim}) exited with signal 9 (SIGKILL)" in server.log()
        # Its replacement took over the dead upload's claim at its start:
        # the uuid is free at once, not after a lease.
        waitUntil(
            lambda: not server.sql("SELECT 1 FROM resource WHERE uuid = %s", (uuid,)),
            30,
            "the claim released",
        )
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(1000))
        assert upload(server, blob, uuid)["uuid"] == uuid
        untilBothAnswer(server)
    finally:
        assert server.stop() == 0
    assert postgresOf(dataDir) == []


def test_sigtermLetsAnUploadFinishThenStopsEverything(tmp_path: Path) -> None:
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--workers", "2", "--shutdown-timeout", "20")
    pids = list(workers(server).values())
    uuid = newUUID()
    size = 2 * 1024 * 1024
    body = os.urandom(size)
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    prefix = openForm(uuid, size)
    s = rawRequest(server, formHead(len(prefix) + size + len(closing)), prefix + body[: size // 2])
    try:
        waitUntil(
            lambda: (
                server.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == [("pending",)]
            ),
            30,
            "the upload claimed",
        )
        server.process.send_signal(signal.SIGTERM)
        waitUntil(lambda: _refused(server), 30, "no longer accepting")
        s.sendall(body[size // 2 :] + closing)
        head = readResponseHead(s)
        assert head.startswith(b"HTTP/1.1 201"), head
    finally:
        s.close()
    try:
        assert server.process.wait(60) == 0
    finally:
        server.stop(signal.SIGKILL)
    assert "cut" not in server.log()
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    assert postgresOf(dataDir) == []
    again = startServer(dataDir)
    try:
        assert again.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == [("ready",)]
    finally:
        again.stop()


def _refused(server: Server) -> bool:
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_tlsWithTwoWorkers(tmp_path: Path) -> None:
    pki = makePKI(tmp_path / "pki")
    server = startServer(
        str(tmp_path / "data"),
        "--workers", "2", "--host", "127.0.0.1", "--port", "0",
        "--cert", str(pki.cert), "--key", str(pki.key),
    )  # fmt: skip
    try:
        [address] = server.addresses
        assert address.startswith("https://127.0.0.1:")
        untilBothAnswer(server, "--cacert", str(pki.ca), url=address.rstrip("/"))
        out = curl("-sS", "--cacert", str(pki.ca), "-u", f"{server.user}:{server.password}",
                   address + "data")  # fmt: skip
        assert '"items"' in out.stdout, out.stderr
    finally:
        assert server.stop() == 0


def test_twoListenEndpoints(tmp_path: Path) -> None:
    """A TLS endpoint of --listen and a UNIX socket, both served by both workers."""
    pki = makePKI(tmp_path / "pki")
    sock = str(tmp_path / "morpheo.sock")
    tls = (
        f"ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.leaf}"
        f":extraCertChain={pki.intermediate}"
    )
    server = startServer(
        str(tmp_path / "data"), "--workers", "2", "--listen", tls, "--listen", f"unix:{sock}"
    )
    try:
        address, unix = server.addresses
        assert address.startswith("https://127.0.0.1:")
        assert unix == f"unix:{sock}"
        untilBothAnswer(server, "--cacert", str(pki.ca), url=address.rstrip("/"))
        for _ in range(4):
            health(server, "--unix-socket", sock, url="http://x")
        # The socket's file stays while a worker is replaced, and goes with the service.
        victim = workers(server)[0]
        os.kill(victim, signal.SIGKILL)
        waitUntil(lambda: workers(server).get(0, victim) != victim, 30, "a replacement serving")
        health(server, "--unix-socket", sock, url="http://x")
    finally:
        assert server.stop() == 0
    assert not os.path.exists(sock)


def test_oneServicePerDataDirectory(tmp_path: Path) -> None:
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--workers", "2")
    try:
        for args in (["--workers", "2"], []):
            line = startFails(dataDir, *args)
            assert f"is in use by pid {server.process.pid}: one service per data directory" in line
        health(server)
    finally:
        assert server.stop() == 0


def test_anExternalPostgreSQL(tmp_path: Path) -> None:
    with ExternalPostgres(str(tmp_path / "pg")) as pg:
        dataDir = str(tmp_path / "data")
        server = startServer(dataDir, "--workers", "2", *pg.serverArgs(), env=pg.serverEnv())
        try:
            untilBothAnswer(server)
            blob = tmp_path / "blob.bin"
            blob.write_bytes(os.urandom(5000))
            uuid = upload(server, blob)["uuid"]
            # Both workers keep sessions of their own on it (the parent none).
            assert len(children(server)) == 2
            assert len(pg.backends()) >= 2
            kinds = serviceSQL(pg, "SELECT kind FROM resource WHERE uuid = %s", (uuid,))
            assert kinds == [("data",)]
        finally:
            assert server.stop() == 0
        assert not os.path.exists(os.path.join(dataDir, "postgres"))


def test_workersStopWhenTheirParentIsKilled(tmp_path: Path) -> None:
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir, "--workers", "2")
    pids = list(workers(server).values())
    try:
        server.kill()
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in pids if psutil.pid_exists(pid)]
    finally:
        server.stop(signal.SIGKILL)
        for process in postgresOf(dataDir):
            process.send_signal(signal.SIGQUIT)


def test_aStatelessNodesReplacementFreesItsPredecessorsUpload(
    tmp_path: Path, seaweedfs: SeaweedFS
) -> None:
    """
    On --db-host and S3 a node keeps nothing on disk and is a new node at
    each start, but its workers keep their names for the run: a replacement
    frees what the worker it replaces left, at once.
    """
    with ExternalPostgres(str(tmp_path / "pg")) as pg:
        server = startServer(
            str(tmp_path / "data"),
            "--workers", "2", *pg.serverArgs(), *seaweedfs.serverArgs(),
            env={**pg.serverEnv(), **seaweedfs.serverEnv()},
        )  # fmt: skip

        def owners(uuid: str) -> list[str]:
            rows = serviceSQL(pg, "SELECT claimed_by FROM resource WHERE uuid = %s", (uuid,))
            return [row[0] for row in rows]

        try:
            uuid = newUUID()
            s = rawUpload(server, uuid, 16 * 1024 * 1024, sent=1024 * 1024)
            try:
                waitUntil(lambda: bool(owners(uuid)), 30, "the upload claimed")
                [owner] = owners(uuid)
                index = int(owner.rsplit("/w", 1)[1])
                victim = workers(server)[index]
                os.kill(victim, signal.SIGKILL)
                waitUntil(lambda: not owners(uuid), 30, "the claim released")
            finally:
                s.close()
            blob = tmp_path / "blob.bin"
            blob.write_bytes(os.urandom(1000))
            assert upload(server, blob, uuid)["uuid"] == uuid
        finally:
            assert server.stop() == 0
