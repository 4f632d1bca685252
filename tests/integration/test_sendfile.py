"""
Local blobs sent with C{sendfile}, for real: the web layer over the local
blob store and the in-memory metadata store, served on a TCP port of the
test's own reactor with a short idle timeout, and clients on real sockets
(curl, and plain sockets in threads): whole blobs, ranges, several ranges,
HEAD, a client gone in the middle, a slow reader served to the end, one
that reads nothing cut at the idle timeout; no descriptor left behind.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool

from morpheo._types import Listing
from morpheo.blobstores import LocalBlobStore
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import Objects
from morpheo.web import BasicAuth, StorageAPI, StreamingSite
from morpheo.web._sendfile import SENDFILE_MIN
from tests.integration.helpers import curl

USER, PASSWORD = "tester", "s3cret-pass"
MiB = 1024 * 1024
#: The idle timeout of the test's site (seconds).
IDLE = 2.0


class _Counting(LocalBlobStore):
    """A local store that counts how its blobs are read."""

    opened = 0
    produced = 0

    def openBlob(self, key: str) -> Any:
        self.opened += 1
        return super().openBlob(key)

    def produce(self, *args: Any, **kwargs: Any) -> Any:
        self.produced += 1
        return super().produce(*args, **kwargs)


@frozen
class Served:
    url: str
    port: int
    store: _Counting
    objects: Objects

    async def put(self, data: bytes) -> str:
        """A new data object holding C{data}: its blob's path."""
        await deferToThread(self._curlUpload, data)
        found = await self.objects.list("data", _listing())
        return f"/data/{found.items[0].uuid}/blob"

    def _curlUpload(self, data: bytes) -> None:
        path = os.path.join(self.store.root, "..", f"upload-{hashlib.sha256(data).hexdigest()}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            done = curl(
                "--fail", "-s", "-u", f"{USER}:{PASSWORD}", "-F", f"size={len(data)}",
                "-F", f"blob=@{path}", f"{self.url}/data",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        finally:
            os.unlink(path)


def _listing() -> Listing:
    return Listing(1)


@pytest_twisted.async_yield_fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    pool = ThreadPool(2, 4, "sendfile-test")
    pool.start()
    real: Any = reactor
    store = _Counting(str(tmp_path / "blobs"), real, pool)
    await store.check()
    objects = Objects(MemoryMetadataStore(real), store, reactor=real, pool=pool)
    api = StorageAPI(objects, BasicAuth({USER: PASSWORD}, clock=real))
    site = StreamingSite(api.resource(), reactor=real, timeout=IDLE)
    port = real.listenTCP(0, site, interface="127.0.0.1")
    number = port.getHost().port
    try:
        yield Served(f"http://127.0.0.1:{number}", number, store, objects)
    finally:
        await port.stopListening()
        pool.stop()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _request(port: int, path: str, *headers: str, method: str = "GET") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Authorization: Basic {token}", *headers]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def _readAll(s: socket.socket, pause: float = 0.0, step: int = 65536) -> bytes:
    """Read until the server closes (the requests say Connection: close)."""
    chunks: list[bytes] = []
    while True:
        data = s.recv(step)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        if pause:
            time.sleep(pause)


def _split(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


async def _settled(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not settled in time")
        d: Deferred[None] = Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d


@pytest_twisted.ensureDeferred
async def test_whole_blobs_byte_for_byte(served: Served, tmp_path: Path) -> None:
    for size in (SENDFILE_MIN, 3 * MiB + 7, 40 * MiB):
        data = os.urandom(size)
        path = await served.put(data)
        out = tmp_path / "out"
        done = await deferToThread(
            curl, "--fail", "-s", "-u", f"{USER}:{PASSWORD}", "-o", str(out), served.url + path
        )
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == data
    assert served.store.opened == 3 and served.store.produced == 0


@pytest_twisted.ensureDeferred
async def test_small_blobs_take_the_one_read(served: Served) -> None:
    data = os.urandom(4096)
    path = await served.put(data)
    s = _request(served.port, path, "Connection: close")
    head, body = _split(await deferToThread(_readAll, s))
    s.close()
    assert head.startswith(b"HTTP/1.1 200") and body == data
    assert served.store.opened == 0 and served.store.produced == 1


@pytest_twisted.ensureDeferred
async def test_ranges_and_several_ranges(served: Served) -> None:
    data = os.urandom(5 * MiB)
    path = await served.put(data)
    s = _request(served.port, path, "Range: bytes=1000-3000999", "Connection: close")
    head, body = _split(await deferToThread(_readAll, s))
    s.close()
    assert head.startswith(b"HTTP/1.1 206") and body == data[1000:3001000]
    spec = "bytes=0-9, 1000000-1999999, -100"
    s = _request(served.port, path, f"Range: {spec}", "Connection: close")
    head, body = _split(await deferToThread(_readAll, s))
    s.close()
    assert head.startswith(b"HTTP/1.1 206")
    [ctype] = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-type:")]
    [length] = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
    assert int(length.split(b":")[1]) == len(body)
    boundary = ctype.split(b"boundary=")[1]
    parts = body.split(b"\r\n--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    size = len(data)
    expected = [(0, 9), (1000000, 1999999), (size - 100, size - 1)]
    for part, (start, end) in zip(parts[1:-1], expected, strict=True):
        partHead, _, partData = part[2:].partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {start}-{end}/{size}".encode() in partHead
        assert partData == data[start : end + 1]


@pytest_twisted.ensureDeferred
async def test_keep_alive_and_head(served: Served) -> None:
    """Two GETs and a HEAD on one connection: each response where it belongs."""
    data = os.urandom(2 * MiB)
    path = await served.put(data)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    get = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n"
    head = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n"
    last = get.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", served.port)) as s:
            s.sendall((get + head + last).encode())
            return _readAll(s)

    response = await deferToThread(talk)
    first, rest = _split(response)
    assert first.startswith(b"HTTP/1.1 200") and rest[: len(data)] == data
    second, rest = _split(rest[len(data) :])
    assert second.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % len(data) in second
    third, rest = _split(rest)
    assert third.startswith(b"HTTP/1.1 200") and rest == data


@pytest_twisted.ensureDeferred
async def test_a_client_gone_mid_download_leaves_nothing_open(served: Served) -> None:
    data = os.urandom(64 * MiB)
    path = await served.put(data)
    before = _fds()

    def cut() -> None:
        s = _request(served.port, path)
        s.recv(1024 * 1024)
        # A reset, not a clean close: the server learns it as it writes.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    await deferToThread(cut)
    await _settled(lambda: _fds() <= before)
    # And the service goes on.
    s = _request(served.port, path, "Range: bytes=-300000", "Connection: close")
    head, body = _split(await deferToThread(_readAll, s))
    s.close()
    assert head.startswith(b"HTTP/1.1 206") and body == data[-300000:]


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_gets_everything(served: Served) -> None:
    """Reading a little at a time, never idle for the timeout: served whole."""
    data = os.urandom(3 * MiB)
    path = await served.put(data)

    def slow() -> bytes:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.connect(("127.0.0.1", served.port))
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        try:
            return _readAll(s, pause=0.02, step=64 * 1024)
        finally:
            s.close()

    head, body = _split(await deferToThread(slow))
    assert head.startswith(b"HTTP/1.1 200") and body == data


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_nothing_is_cut_at_the_idle_timeout(served: Served) -> None:
    data = os.urandom(64 * MiB)
    path = await served.put(data)
    before = _fds()

    def stall() -> tuple[float, bytes]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.connect(("127.0.0.1", served.port))
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()
        )
        started = time.monotonic()
        time.sleep(IDLE + 2)
        got = b""
        try:
            got = _readAll(s)
        except ConnectionResetError:
            pass
        finally:
            s.close()
        return time.monotonic() - started, got

    elapsed, got = await deferToThread(stall)
    assert len(got) < len(data)  # cut, not served
    assert elapsed < IDLE + 10
    await _settled(lambda: _fds() <= before)


@pytest_twisted.ensureDeferred
async def test_a_missing_file_is_an_error_before_any_byte(served: Served) -> None:
    data = os.urandom(SENDFILE_MIN)
    path = await served.put(data)
    stored = (await served.objects.list("data", _listing())).items[0]
    os.unlink(os.path.join(served.store.root, *stored.blob_key.split("/")))
    s = _request(served.port, path, "Connection: close")
    head, body = _split(await deferToThread(_readAll, s))
    s.close()
    assert head.startswith(b"HTTP/1.1 500") and b'"error"' in body
