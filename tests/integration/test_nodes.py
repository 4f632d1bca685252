"""
Several nodes on one PostgreSQL and one SeaweedFS bucket, as an operator
runs them: each serves what another stored; two uploads of one uuid through
two nodes end with exactly one 201; a node stalled mid-upload past its claim's
lease (stopped with SIGSTOP, or its database link frozen) cannot touch the
upload that took its uuid meanwhile, and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from attrs import define, field
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import (
    BOUNDARY,
    curl,
    curlOK,
    formHead,
    newUUID,
    openForm,
    rawRequest,
    readResponseHead,
)
from tests.integration.servers import SeaweedFS, Server, startServer, waitUntil

#: Short leases, so that a stall outlives one in seconds.
LEASE = 2.0


def _dsnParts(dsn: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in dsn.split())


def startNode(tmp: str, name: str, seaweedfs: SeaweedFS, db: dict[str, str], *extra: str) -> Server:
    """A stateless node on the database C{db} and the SeaweedFS bucket."""
    node = startServer(
        os.path.join(tmp, name),
        *seaweedfs.serverArgs(),
        "--db-host", db["host"], "--db-port", db["port"],
        "--db-name", db["dbname"], "--db-user", db["user"],
        "--claim-lease", str(LEASE),
        *extra,
        env=seaweedfs.serverEnv(),
    )  # fmt: skip
    node.store = seaweedfs
    return node


@pytest.fixture
def database(dsn: str) -> dict[str, str]:
    return _dsnParts(dsn)


@pytest.fixture
def nodes(
    tmp_path: object, seaweedfs: SeaweedFS, database: dict[str, str]
) -> Iterator[tuple[Server, Server]]:
    a = startNode(str(tmp_path), "a", seaweedfs, database)
    b = startNode(str(tmp_path), "b", seaweedfs, database)
    yield a, b
    for node in (a, b):
        node.stop()


def fileOf(tmp: str, name: str, data: bytes) -> str:
    """A file of C{data} for curl to send; its path."""
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def statusOf(node: Server, *args: str) -> str:
    """The status curl gets from C{node} as its user, as text."""
    auth = f"{node.user}:{node.password}"
    return curl("-u", auth, "-o", "/dev/null", "-w", "%{http_code}", *args).stdout


def uploadThrough(node: Server, uuid: str, data: bytes, tmp: str) -> dict[str, object]:
    path = fileOf(tmp, f"{uuid}.bin", data)
    out = curlOK(
        node, "-F", f"uuid={uuid}", "-F", f"size={len(data)}", "-F", f"blob=@{path}",
        f"{node.url}/data",
    )  # fmt: skip
    return dict(json.loads(out))


def blobOf(node: Server, path: str) -> bytes:
    """The blob at C{path} as C{node} serves it."""
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-u", f"{node.user}:{node.password}", f"{node.url}{path}"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def sha256Through(node: Server, uuid: str) -> str:
    return hashlib.sha256(blobOf(node, f"/data/{uuid}/blob")).hexdigest()


def claimed(database: dict[str, str], uuid: str) -> bool:
    """Whether C{uuid} has a pending claim in the database."""
    db = psycopg2.connect(" ".join(f"{k}={v}" for k, v in database.items()))
    try:
        with db.cursor() as cur:
            cur.execute("SELECT 1 FROM resource WHERE uuid = %s AND state = 'pending'", (uuid,))
            return cur.fetchone() is not None
    finally:
        db.close()


def keysOf(seaweedfs: SeaweedFS, uuid: str) -> tuple[list[str], list[str]]:
    """The bucket's objects, and its unfinished multipart uploads, of C{uuid}."""
    return seaweedfs.objects(f"data/{uuid}"), seaweedfs.uploads(f"data/{uuid}")


def test_aStatelessNodeKeepsNothingOnDisk(nodes: tuple[Server, Server]) -> None:
    for node in nodes:
        assert sorted(os.listdir(node.dataDir)) == ["twistd.log"]


def test_anyNodeServesWhatAnotherStored(
    nodes: tuple[Server, Server], seaweedfs: SeaweedFS, tmp_path: object
) -> None:
    a, b = nodes
    uuid, data = newUUID(), os.urandom(300_000)
    stored = uploadThrough(a, uuid, data, str(tmp_path))
    assert json.loads(curlOK(b, f"{b.url}/data/{uuid}")) == stored
    assert sha256Through(b, uuid) == hashlib.sha256(data).hexdigest()

    deleted = json.loads(curlOK(b, "-X", "DELETE", f"{b.url}/data/{uuid}"))
    assert deleted == stored
    assert statusOf(a, f"{a.url}/data/{uuid}") == "404"
    assert keysOf(seaweedfs, uuid) == ([], [])


def test_changesThroughOneNodeAreSeenThroughTheOther(
    nodes: tuple[Server, Server], seaweedfs: SeaweedFS, tmp_path: object
) -> None:
    a, b = nodes
    path = fileOf(str(tmp_path), "p.zip", os.urandom(5000))
    made = json.loads(
        curlOK(a, "-F", "name=p", "-F", "description=d", "-F", "size=5000",
               "-F", f"blob=@{path}", f"{a.url}/problem")
    )  # fmt: skip
    renamed, replacement = newUUID(), os.urandom(7000)
    path = fileOf(str(tmp_path), "p.zip", replacement)
    patched = json.loads(
        curlOK(b, "-X", "PATCH", "-F", f"uuid={renamed}", "-F", "name=q", "-F", "size=7000",
               "-F", f"blob=@{path}", f"{b.url}/problem/{made['uuid']}")
    )  # fmt: skip
    assert (patched["uuid"], patched["name"]) == (renamed, "q")
    assert json.loads(curlOK(a, f"{a.url}/problem/{renamed}")) == patched
    assert blobOf(a, f"/problem/{renamed}/blob") == replacement
    curlOK(a, "-X", "DELETE", f"{a.url}/problem/{renamed}")
    assert seaweedfs.objects(f"problem/{made['uuid']}") == []
    assert seaweedfs.objects(f"problem/{renamed}") == []


def test_whatANodeKeptIsForgottenOnceChangedElsewhere(
    nodes: tuple[Server, Server], database: dict[str, str], tmp_path: object
) -> None:
    """
    A node keeps the records it read (for ten seconds at most): a change
    made through another node, or by hand in the database, reaches it
    within a second, told by PostgreSQL.
    """
    a, b = nodes
    path = fileOf(str(tmp_path), "p.zip", os.urandom(5000))
    made = json.loads(
        curlOK(a, "-F", "name=p", "-F", "description=d", "-F", "size=5000",
               "-F", f"blob=@{path}", f"{a.url}/problem")
    )  # fmt: skip
    uuid = made["uuid"]

    def nameOn(node: Server) -> str | None:
        out = curl("-u", f"{node.user}:{node.password}", "-f", f"{node.url}/problem/{uuid}")
        return str(json.loads(out.stdout)["name"]) if out.returncode == 0 else None

    for _ in range(3):
        assert nameOn(a) == "p"
        assert len(blobOf(a, f"/problem/{uuid}/blob")) == 5000
    # Served from what a keeps: the changes below reach it by notification.
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(curlOK(a, f"{a.url}/metrics"))
        for sample in family.samples
    }
    for cache in ("records", "blobs"):
        hits = samples[("morpheo_cache_reads_total", (("cache", cache), ("outcome", "hit")))]
        assert hits >= 2, samples
    assert samples[("morpheo_cache_changes_heard", ())] == 1
    curlOK(b, "-X", "PATCH", "-F", "name=q", f"{b.url}/problem/{uuid}")
    waitUntil(lambda: nameOn(a) == "q", 1.0, "node a serving the name given through b")

    db = psycopg2.connect(" ".join(f"{k}={v}" for k, v in database.items()))
    try:
        db.autocommit = True
        with db.cursor() as cur:
            cur.execute("UPDATE resource SET name = 'by hand' WHERE uuid = %s", (uuid,))
    finally:
        db.close()
    waitUntil(lambda: nameOn(a) == "by hand", 1.0, "node a serving the name given by hand")

    curlOK(b, "-X", "DELETE", f"{b.url}/problem/{uuid}")
    waitUntil(
        lambda: statusOf(a, f"{a.url}/problem/{uuid}") == "404", 1.0, "node a seeing the deletion"
    )
    assert statusOf(a, f"{a.url}/problem/{uuid}/blob") == "404"


def test_oneUUIDRacedThroughTwoNodesIsStoredOnce(
    nodes: tuple[Server, Server], seaweedfs: SeaweedFS, tmp_path: object
) -> None:
    a, b = nodes
    path = fileOf(str(tmp_path), "blob", os.urandom(200_000))

    def attempt(node: Server, uuid: str) -> str:
        return statusOf(
            node, "-F", f"uuid={uuid}", "-F", "size=200000", "-F", f"blob=@{path}",
            f"{node.url}/data",
        )  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        for _ in range(8):
            uuid = newUUID()
            codes = sorted(pool.map(attempt, (a, b), (uuid, uuid)))
            assert codes == ["201", "409"]
            assert keysOf(seaweedfs, uuid)[0] != []
            assert len(keysOf(seaweedfs, uuid)[0]) == 1


# A node that stalls mid-upload


#: What ends the stalled uploads' form after their blob.
CLOSING = f"\r\n--{BOUNDARY}--\r\n".encode()


def startStalledUpload(node: Server, uuid: str, size: int, sent: int) -> socket.socket:
    """An upload through C{node} of which only C{sent} blob bytes are sent."""
    prefix = openForm(uuid, size)
    client = rawRequest(
        node, formHead(len(prefix) + size + len(CLOSING)), prefix + os.urandom(sent)
    )
    client.settimeout(60)
    return client


def sendRest(client: socket.socket, size: int, sent: int) -> None:
    """Send the rest of the blob and the form's end."""
    client.sendall(os.urandom(size - sent) + CLOSING)


def readResponse(client: socket.socket) -> tuple[int, dict[str, str]]:
    """The status and JSON body of the response on C{client}."""
    data = readResponseHead(client)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = client.recv(65536)
        assert chunk, data
        body += chunk
    client.close()
    return int(head.split()[1]), json.loads(body)


def finishStalledUpload(client: socket.socket, size: int, sent: int) -> tuple[int, dict[str, str]]:
    """Send the rest of the blob and the form's end; the response."""
    sendRest(client, size, sent)
    return readResponse(client)


def assertSecondUploadIntact(
    second: Server, uuid: str, data: bytes, seaweedfs: SeaweedFS, timeout: float = 30
) -> None:
    """The uuid is the second upload's, byte for byte, and nothing else is left of it."""
    assert sha256Through(second, uuid) == hashlib.sha256(data).hexdigest()
    stored = json.loads(curlOK(second, f"{second.url}/data/{uuid}"))
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()

    def onlyTheSecond() -> bool:
        objects, uploads = keysOf(seaweedfs, uuid)
        return len(objects) == 1 and uploads == []

    waitUntil(onlyTheSecond, timeout, "only the second upload's object in the bucket")


def retryUntilStored(node: Server, uuid: str, data: bytes, tmp: str, timeout: float) -> float:
    """Send the upload through C{node} until it is stored; how long that took."""
    start = time.monotonic()
    path = fileOf(tmp, f"retry-{uuid}", data)
    while True:
        status = statusOf(
            node, "-F", f"uuid={uuid}", "-F", f"size={len(data)}", "-F", f"blob=@{path}",
            f"{node.url}/data",
        )  # fmt: skip
        if status == "201":
            return time.monotonic() - start
        assert status == "409", status
        assert time.monotonic() - start < timeout, "the uuid was never freed"
        time.sleep(0.2)


MiB = 1024 * 1024


def test_aNodeStoppedPastItsLeaseCannotTouchTheUploadThatTookItsUUID(
    nodes: tuple[Server, Server], seaweedfs: SeaweedFS, database: dict[str, str], tmp_path: object
) -> None:
    a, b = nodes
    uuid, size, sent = newUUID(), 12 * MiB, 9 * MiB
    client = startStalledUpload(a, uuid, size, sent)
    waitUntil(lambda: claimed(database, uuid), 30, "node a's claim")
    a.process.send_signal(signal.SIGSTOP)
    try:
        data = os.urandom(2 * MiB)
        freed = retryUntilStored(b, uuid, data, str(tmp_path), timeout=4 * LEASE + 10)
        print(f"uuid free through the other node {freed:.1f}s after the stall")
        assert freed < 2 * LEASE + 3
    finally:
        a.process.send_signal(signal.SIGCONT)
    status, error = finishStalledUpload(client, size, sent)
    print("the stalled node's client got", status, error)
    assert status == 503
    assert "took longer than its claim's lease" in error["error"]
    assertSecondUploadIntact(b, uuid, data, seaweedfs)
    # Warned at most once (the upload may end before the next heartbeat).
    assert a.log().count("swept as dead") <= 1


# A node cut from its database


@define
class FreezableProxy:
    """
    A TCP proxy to PostgreSQL's Unix socket that the test can freeze: while
    frozen it moves no byte either way and its connections stay open, as a
    link that went silent (a partition, a stuck firewall) does.
    """

    target: str
    port: int = 0
    frozen: threading.Event = field(factory=threading.Event)
    _stop: threading.Event = field(factory=threading.Event)
    _listener: socket.socket = field(init=False)
    _thread: threading.Thread = field(init=False)

    def start(self) -> FreezableProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    upstream = socket.socket(socket.AF_UNIX)
                    upstream.connect(self.target)
                    peers[client], peers[upstream] = upstream, client
                    selector.register(client, selectors.EVENT_READ)
                    selector.register(upstream, selectors.EVENT_READ)
                    continue
                if self.frozen.is_set():
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers.get(sock)
                if not data or other is None:
                    for s in (sock, other):
                        if s is not None and s in peers:
                            selector.unregister(s)
                            peers.pop(s)
                            s.close()
                    continue
                other.sendall(data)
            if self.frozen.is_set():
                time.sleep(0.05)
        for s in list(peers):
            s.close()
        self._listener.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_aNodeCutFromItsDatabasePastItsLeaseCannotTouchTheUploadThatTookItsUUID(
    tmp_path: object, seaweedfs: SeaweedFS, database: dict[str, str], postgres: str
) -> None:
    socketPath = os.path.join(database["host"], f".s.PGSQL.{database['port']}")
    proxy = FreezableProxy(socketPath).start()
    tmp = str(tmp_path)
    a = startNode(tmp, "a", seaweedfs, {**database, "host": "127.0.0.1", "port": str(proxy.port)})
    b = startNode(tmp, "b", seaweedfs, database)
    try:
        uuid, size, sent = newUUID(), 12 * MiB, 9 * MiB
        client = startStalledUpload(a, uuid, size, sent)
        waitUntil(lambda: claimed(database, uuid), 30, "node a's claim")
        proxy.frozen.set()
        data = os.urandom(2 * MiB)
        freed = retryUntilStored(b, uuid, data, tmp, timeout=4 * LEASE + 10)
        print(f"uuid free through the other node {freed:.1f}s after the link froze")
        sendRest(client, size, sent)
        time.sleep(LEASE)
        proxy.frozen.clear()
        status, error = readResponse(client)
        print("the cut node's client got", status, error)
        assert status == 503
        assertSecondUploadIntact(b, uuid, data, seaweedfs)
        # Node a is itself again once its link is.
        again = newUUID()
        assert uploadThrough(a, again, b"x" * 10, tmp)["uuid"] == again
    finally:
        proxy.frozen.clear()
        for node in (a, b):
            node.stop()
        proxy.stop()
