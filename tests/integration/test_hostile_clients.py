"""
Clients no one should have to serve, against a real twistd: models sent
chunked by curl (no Content-Length) to the local store, S3 and GCS, byte for
byte, over the maximum blob size too; HTTP the parser refuses, answered as
JSON on a real socket; and slow clients: 500 connections trickling header
bytes or sending nothing while a normal request stays fast, cut at the
header timeout, and a body too slow cut with a 408 that leaves nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import curl, newUUID
from tests.integration.servers import SeaweedFS, Server, startServer

MiB = 1024 * 1024

STORES = {"local": "server", "s3": "s3Server", "gc": "gcServer"}


@pytest.fixture(params=list(STORES))
def anyServer(request: pytest.FixtureRequest) -> Server:
    server: Server = request.getfixturevalue(STORES[request.param])
    return server


def auth(server: Server) -> str:
    return f"{server.user}:{server.password}"


def newAlgo(server: Server, tmp_path: Path) -> str:
    blob = tmp_path / "algo.tar.gz"
    blob.write_bytes(b"an algo")
    uuid = newUUID()
    done = curl(
        "--fail", "-u", auth(server), "-F", f"uuid={uuid}", "-F", "name=algo",
        "-F", "size=7", "-F", f"blob=@{blob}", f"{server.url}/algo",
    )  # fmt: skip
    assert done.returncode == 0, done
    return uuid


def chunkedModel(server: Server, algo: str, path: Path) -> tuple[int, dict[str, object]]:
    """curl's chunked upload of the file at C{path}: its status and JSON."""
    done = curl(
        "-u", auth(server), "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}",
        "-w", "\n%{http_code}", f"{server.url}/model?algo={algo}",
    )  # fmt: skip
    assert done.returncode == 0, done
    body, code = done.stdout.rsplit("\n", 1)
    return int(code), json.loads(body)


def sha256Of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def bigFile(path: Path, size: int) -> Path:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            f.write(block[: min(left, MiB)])
            left -= min(left, MiB)
    return path


@pytest.mark.parametrize("size", [0, 40 * MiB + 5], ids=["empty", "40MiB"])
def test_a_chunked_model_from_curl_is_stored_byte_for_byte(
    anyServer: Server, tmp_path: Path, size: int
) -> None:
    """40 MiB: past S3's 16 MiB parts and GCS's 32 MiB chunks."""
    algo = newAlgo(anyServer, tmp_path)
    model = bigFile(tmp_path / "model.bin", size)
    code, stored = chunkedModel(anyServer, algo, model)
    assert code == 201, stored
    sha = sha256Of(model)
    assert (stored["size"], stored["sha256"], stored["algo"]) == (size, sha, algo)
    copy = tmp_path / "copy.bin"
    down = curl("--fail", "-u", auth(anyServer), "-o", str(copy),
                f"{anyServer.url}/model/{stored['uuid']}/blob")  # fmt: skip
    assert down.returncode == 0, down
    assert sha256Of(copy) == sha
    rows = anyServer.sql("SELECT size, sha256 FROM resource WHERE uuid = %s", (stored["uuid"],))
    assert rows == [(size, sha)]
    if anyServer.store is not None:
        assert anyServer.store.uploads(prefix="model/") == []


@pytest.fixture(scope="module")
def cappedS3Server(
    seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server on S3 that takes blobs of at most 20 MiB."""
    s = startServer(
        str(tmp_path_factory.mktemp("capped-s3")),
        *seaweedfs.serverArgs(),
        "--max-blob-size", "20M",
        env=seaweedfs.serverEnv(),
    )  # fmt: skip
    s.store = seaweedfs
    yield s
    s.stop()


def test_a_chunked_model_over_the_maximum_is_413_and_its_parts_are_gone(
    cappedS3Server: Server, tmp_path: Path
) -> None:
    server = cappedS3Server
    algo = newAlgo(server, tmp_path)
    assert server.store is not None
    before = server.files()
    code, answer = chunkedModel(server, algo, bigFile(tmp_path / "model.bin", 40 * MiB))
    assert (code, answer) == (
        413,
        {"error": "the blob is larger than the maximum of 20971520 bytes"},
    )
    store = server.store
    waitFor(lambda: store.uploads(prefix="model/") == [])
    assert server.files() == before
    assert server.sql("SELECT count(*) FROM resource WHERE kind = 'model'") == [(0,)]
    code, stored = chunkedModel(server, algo, bigFile(tmp_path / "small.bin", 20 * MiB))
    assert code == 201 and stored["size"] == 20 * MiB


def test_a_malformed_chunk_mid_model_is_400_and_leaves_no_file(
    server: Server, tmp_path: Path
) -> None:
    algo = newAlgo(server, tmp_path)
    before = server.files()
    token = base64.b64encode(auth(server).encode()).decode()
    uuid = newUUID()
    chunk = os.urandom(MiB)
    head = (
        f"POST /model?algo={algo}&uuid={uuid} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Basic {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 3)

        def writing() -> bool:
            rows = server.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,))
            return rows == [("pending",)]

        waitFor(writing)
        s.sendall(b"not a chunk size\r\n")
        answer = readAll(s, 10)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "the chunked request body is malformed: Chunk-size must be an integer."
    }
    waitFor(lambda: server.files() == before)
    assert server.sql("SELECT count(*) FROM resource WHERE uuid = %s", (uuid,)) == [(0,)]


# HTTP the parser refuses, on a real socket


def exchange(server: Server, data: bytes) -> tuple[bytes, bool]:
    """Send C{data}; what came back, and whether the server then closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 17000 + b"\r\n\r\n", 431),
        (b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 4300 + b"\r\n\r\n", 413),
        (b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (
            b"POST /data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET /data/%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400),
        (b"NOT HTTP\r\n\r\n", 400),
    ],
    ids=["header block", "4300 digits", "request line", "two codings", "not UTF-8", "garbage"],
)
def test_what_the_parser_refuses_is_json_on_the_wire(
    server: Server, data: bytes, code: int
) -> None:
    answer, closed = exchange(server, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % code), answer[:200]
    assert b"Content-Type: application/json" in head
    assert set(json.loads(body)) == {"error"}
    assert closed
    assert "Unhandled Error" not in server.log()


# Slow clients


@pytest.fixture(scope="module")
def strictServer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with short deadlines: 3 s for the headers, 1 KiB/s over 3 s for a body."""
    s = startServer(
        str(tmp_path_factory.mktemp("strict")),
        "--header-timeout", "3", "--min-body-rate", "1K", "--body-rate-window", "3",
    )  # fmt: skip
    yield s
    s.stop()


def timedGET(server: Server) -> float:
    """Seconds a GET /health takes, on a connection of its own."""
    start = time.monotonic()
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        assert response.status == 200 and json.load(response) == {"status": "ok"}
    return time.monotonic() - start


def openMany(server: Server, n: int) -> list[socket.socket]:
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sockets.append(s)
    return sockets


def readAll(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_500_trickling_clients_do_not_slow_others_and_are_cut(strictServer: Server) -> None:
    sockets = openMany(strictServer, 500)
    try:
        opened = time.monotonic()
        trickle = b"GET /health HTTP/1.1\r\nX-Slow: " + b"x" * 100
        worst, sent = 0.0, 0
        # A byte each every 0.2 s: each connection resets the idle timer
        # all the time, and never finishes its headers.
        while time.monotonic() - opened < 2.4:
            for s in sockets:
                s.send(trickle[sent : sent + 1])
            sent += 1
            worst = max(worst, timedGET(strictServer))
            time.sleep(0.2)
        assert worst < 0.5, worst
        answers = [readAll(s, 10) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    assert time.monotonic() - opened < 10
    cut = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    assert len(cut) == 500, {a[:40] for a in answers}
    assert json.loads(cut[0].partition(b"\r\n\r\n")[2]) == {
        "error": "the request's headers did not arrive within 3 seconds"
    }
    assert timedGET(strictServer) < 0.5
    assert "Unhandled Error" not in strictServer.log()


def test_500_silent_clients_do_not_slow_others_and_are_closed(strictServer: Server) -> None:
    started = time.monotonic()
    sockets = openMany(strictServer, 500)
    try:
        opened = time.monotonic()
        # The accept queue holds the burst: no connection waits for its SYN
        # to be sent again.
        assert opened - started < 2
        assert max(timedGET(strictServer) for _ in range(10)) < 0.5
        answers = [readAll(s, 10) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    assert answers == [b""] * 500  # closed, with nothing to answer
    assert time.monotonic() - opened < 10


def test_a_body_too_slow_is_cut_with_408_and_leaves_nothing(
    strictServer: Server, tmp_path: Path
) -> None:
    server = strictServer
    token = base64.b64encode(auth(server).encode()).decode()
    algo = newAlgo(server, tmp_path)
    before = server.files()
    uuid = newUUID()
    head = (
        f"POST /model?algo={algo}&uuid={uuid} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Basic {token}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head)
        started = time.monotonic()
        s.settimeout(0.5)
        answer = b""
        while not answer and time.monotonic() - started < 15:
            s.send(b"x" * 50)  # 100 bytes a second
            try:
                answer = s.recv(65536)
            except TimeoutError:
                pass
        answer += readAll(s, 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "the request body came slower than 1024 bytes a second over 3 seconds"
    }
    assert 3 <= time.monotonic() - started < 10
    assert server.sql("SELECT count(*) FROM resource WHERE uuid = %s", (uuid,)) == [(0,)]
    waitFor(lambda: server.files() == before)  # the temporary file too
    assert "Unhandled Error" not in server.log()


def waitFor(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not so in time"
        time.sleep(0.1)
