"""
Several nodes on the local blob store and one external PostgreSQL, for
real: twistd processes with their own data directories on a scratch
database of the session's PostgreSQL (see conftest's C{dsn}).  The
database serves one local store: a node bringing another directory is
refused at start; nodes mounting one directory with C{--shared-blob-dir}
serve each other's uploads, and none sweeps another's upload in flight.
Beside them, a HEAD on a blob whose file is gone from disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from psycopg2.extensions import parse_dsn
from twisted.internet import reactor

from morpheo.blobstores._local import ID_FILE, TEMP_PREFIX
from morpheo.metadata._localstore import LocalStoreRecord, OtherLocalStore, registerLocalStore
from morpheo.metadata._migrations import defaultMigrationsDir, loadMigrations, migrate
from morpheo.metadata._postgres import Database
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
from tests.integration.servers import Server, startFails, startServer, waitUntil


@pytest.fixture
def database(dsn: str) -> list[str]:
    """The command line of a node on the test's scratch database."""
    parts = parse_dsn(dsn)
    return [
        "--db-host", parts["host"], "--db-port", parts["port"], "--db-user", parts["user"],
        "--db-name", parts["dbname"],
    ]  # fmt: skip


@pytest.fixture
def nodes() -> Iterator[list[Server]]:
    """The servers a test starts, stopped after it whatever happens."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def storeId(blobDir: Path | str) -> str:
    return Path(blobDir, ID_FILE).read_text().strip()


def uploadFile(server: Server, tmp_path: Path, data: bytes) -> str:
    path = tmp_path / f"upload-{newUUID()}.bin"
    path.write_bytes(data)
    out = curlOK(server, "-F", f"size={len(data)}", "-F", f"blob=@{path}", f"{server.url}/data")
    uuid: str = json.loads(out)["uuid"]
    return uuid


def blobOf(server: Server, uuid: str) -> bytes:
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-u", f"{server.user}:{server.password}",
         f"{server.url}/data/{uuid}/blob"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def status(server: Server, method: str, path: str) -> tuple[int, str]:
    """The status of a request, and its body (empty for a HEAD)."""
    verb = ["-I"] if method == "HEAD" else ["-X", method]
    done = curl(
        "-u", f"{server.user}:{server.password}", *verb, "-o", "-", "-w", "\n%{http_code}",
        f"{server.url}{path}",
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def test_a_node_with_another_directory_is_refused_in_one_sentence(
    tmp_path: Path, database: list[str], nodes: list[Server]
) -> None:
    """
    The first node registers its store; a second with another data
    directory (so another blobs directory) would answer 500 for the first
    one's blobs and sweep them as unreferenced: it exits with status 1 and
    one sentence saying which store the database serves and what to do.
    """
    first = startServer(str(tmp_path / "a"), *database)
    nodes.append(first)
    uuid = uploadFile(first, tmp_path, os.urandom(10_000))
    theirs = storeId(first.blobDir)
    assert f"local blob store {theirs} (in {first.blobDir} on " in first.log()

    line = startFails(str(tmp_path / "b"), *database)
    ours = storeId(tmp_path / "b" / "blobs")
    assert ours != theirs
    assert (
        f"the database already serves the local blob store {theirs} (in {first.blobDir} on " in line
    )
    assert f"{socket.gethostname()}, registered " in line
    assert f"not this node's {ours} in {tmp_path / 'b' / 'blobs'}" in line
    assert f"use that directory (--blob-dir {first.blobDir}), another database" in line
    assert "--shared-blob-dir" in line
    # The first node serves on, its blob untouched.
    assert len(blobOf(first, uuid)) == 10_000

    # The identity travels with the blobs: the directory moved to another
    # path, a node with another data directory is its store.
    first.stop()
    moved = tmp_path / "moved"
    shutil.move(first.blobDir, moved)
    again = startServer(str(tmp_path / "c"), *database, "--blob-dir", str(moved))
    nodes.append(again)
    assert len(blobOf(again, uuid)) == 10_000


def test_nodes_sharing_one_directory_serve_each_others_uploads(
    tmp_path: Path, database: list[str], nodes: list[Server]
) -> None:
    shared = tmp_path / "shared-blobs"
    args = [*database, "--blob-dir", str(shared), "--shared-blob-dir"]
    a = startServer(str(tmp_path / "a"), *args)
    nodes.append(a)
    b = startServer(str(tmp_path / "b"), *args)
    nodes.append(b)
    dataA, dataB = os.urandom(50_000), os.urandom(60_000)
    fromA, fromB = uploadFile(a, tmp_path, dataA), uploadFile(b, tmp_path, dataB)
    assert blobOf(b, fromA) == dataA and blobOf(a, fromB) == dataB
    assert status(b, "HEAD", f"/data/{fromA}/blob")[0] == 200
    # A deletion on one node removes the file the other would have served.
    assert status(b, "DELETE", f"/data/{fromA}")[0] == 200
    assert status(a, "HEAD", f"/data/{fromA}/blob")[0] == 404
    assert not any(fromA in name for name in os.listdir(shared / "data"))

    # A node that would keep the directory for itself is kept out.
    line = startFails(str(tmp_path / "c"), *database, "--blob-dir", str(shared))
    assert f"{shared} is in use by nodes started with --shared-blob-dir" in line


def test_a_node_starting_on_a_shared_directory_leaves_an_upload_in_flight_alone(
    tmp_path: Path, database: list[str], nodes: list[Server]
) -> None:
    """
    At start a node sweeps what is unfinished in its blob directory; in a
    shared one the temporary file of another node's upload in flight is
    not a dead run's: it is kept, and the upload completes.
    """
    shared = tmp_path / "shared-blobs"
    args = [*database, "--blob-dir", str(shared), "--shared-blob-dir"]
    a = startServer(str(tmp_path / "a"), *args)
    nodes.append(a)
    uuid, data = newUUID(), os.urandom(1_000_000)
    prefix = openForm(uuid, len(data))
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    s = rawRequest(a, formHead(len(prefix) + len(data) + len(closing)), prefix + data[:500_000])
    try:

        def temporary() -> list[str]:
            found = os.listdir(shared / "data") if (shared / "data").exists() else []
            return [name for name in found if name.startswith(TEMP_PREFIX)]

        waitUntil(lambda: bool(temporary()), 30, "the upload's temporary file")
        b = startServer(str(tmp_path / "b"), *args)
        nodes.append(b)
        assert temporary(), "the second node's start swept the first one's upload"
        s.sendall(data[500_000:] + closing)
        assert readResponseHead(s).startswith(b"HTTP/1.1 201 ")
    finally:
        s.close()
    assert hashlib.sha256(blobOf(b, uuid)).hexdigest() == hashlib.sha256(data).hexdigest()


def test_head_on_a_blob_removed_from_disk_is_no_200(tmp_path: Path, server: Server) -> None:
    """
    The session's server on the local store: a blob's file removed behind
    its back is a 500 to HEAD as to GET, whose error names the store and
    the object, not the file.
    """
    uuid = uploadFile(server, tmp_path, os.urandom(5000))
    [name] = [n for n in os.listdir(os.path.join(server.blobDir, "data")) if n.startswith(uuid)]
    assert status(server, "HEAD", f"/data/{uuid}/blob")[0] == 200
    os.unlink(os.path.join(server.blobDir, "data", name))
    code, _ = status(server, "HEAD", f"/data/{uuid}/blob")
    assert code == 500
    code, body = status(server, "GET", f"/data/{uuid}/blob")
    assert (code, json.loads(body)) == (
        500,
        {"error": f"the blob store (local) has no blob for data {uuid}"},
    )
    assert server.blobDir not in body and name not in body


# The registration itself, on a scratch database


@pytest_twisted.ensureDeferred
async def test_the_first_store_registered_stays_the_one(dsn: str) -> None:
    db = Database(reactor, dsn)
    await db.start()
    try:
        await migrate(db, loadMigrations(defaultMigrationsDir()))
        first = LocalStoreRecord(newUUID(), "host-a", "/srv/a/blobs")
        served = await registerLocalStore(db, first)
        assert (served.storeId, served.host, served.path) == (
            first.storeId,
            first.host,
            first.path,
        )
        assert served.registeredAt is not None
        # The same store from elsewhere (moved, or shared): still the first registration.
        again = await registerLocalStore(db, LocalStoreRecord(first.storeId, "host-b", "/mnt/b"))
        assert again == served
        other = LocalStoreRecord(newUUID(), "host-b", "/srv/b/blobs")
        with pytest.raises(OtherLocalStore) as refused:
            await registerLocalStore(db, other)
        assert refused.value.served == served
        assert await db.query("SELECT count(*) FROM local_store") == [(1,)]
    finally:
        db.close()
