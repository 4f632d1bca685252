"""
Crash recovery with a real twistd process: SIGKILL during several uploads,
start again on the same data directory; nothing partial is visible, what
the crash left is swept, every completed upload is intact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import curlOK, newUUID, rawUpload
from tests.integration.servers import Server, startServer, waitUntil


def uploadSome(server: Server, tmp_path, count: int, size: int) -> dict[str, str]:
    """Complete uploads with curl: their uuids and sha256."""
    completed = {}
    for _ in range(count):
        data = os.urandom(size)
        path = tmp_path / "blob.bin"
        path.write_bytes(data)
        uuid = newUUID()
        out = curlOK(
            server, "-F", f"uuid={uuid}", "-F", f"size={len(data)}", "-F", f"blob=@{path}",
            f"{server.url}/data",
        )  # fmt: skip
        assert uuid in out, out
        completed[uuid] = hashlib.sha256(data).hexdigest()
    return completed


def startUploads(server: Server, uuids: list[str]) -> list[socket.socket]:
    """Uploads of 256 MiB that send 3 MiB and wait: in flight when the crash comes."""
    sockets = []
    for uuid in uuids:
        size = 256 * 1024 * 1024
        sockets.append(rawUpload(server, uuid, size, 3 * 1024 * 1024))
    return sockets


def pending(server: Server) -> int:
    return int(server.sql("SELECT count(*) FROM resource WHERE state = 'pending'")[0][0])


def assertRecovered(
    again: Server, tmp_path, completed: dict[str, str], interrupted: list[str]
) -> None:
    """No claim left, every completed blob intact, the interrupted uuids free again."""
    assert again.sql("SELECT count(*) FROM resource WHERE state <> 'ready'") == [(0,)]
    for uuid, sha in completed.items():
        assert sha in curlOK(again, f"{again.url}/data/{uuid}")
        blob = subprocess.run(
            ["curl", "-sS", "-u", f"{again.user}:{again.password}",
             f"{again.url}/data/{uuid}/blob"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        assert hashlib.sha256(blob).hexdigest() == sha
    one = tmp_path / "one"
    one.write_bytes(b"x")
    for uuid in interrupted:
        out = curlOK(
            again, "-F", f"uuid={uuid}", "-F", "size=1", "-F", f"blob=@{one}", f"{again.url}/data"
        )
        assert uuid in out, out


def test_sigkill_during_uploads_then_restart(tmp_path):
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir)
    interrupted = [newUUID() for _ in range(3)]
    sockets = []
    try:
        completed = uploadSome(server, tmp_path, 3, 2 * 1024 * 1024 + 17)
        sockets = startUploads(server, interrupted)

        def inFlight() -> bool:
            temps = [f for f in server.files() if ".tmp-" in os.path.basename(f)]
            return pending(server) == 3 and len(temps) == 3

        waitUntil(inFlight, 20, "3 uploads in flight")
        server.kill()
        # What the crash left: the claims and the temporary files are there.
        assert pending(server) == 3
        # A committed blob that never got its row (killed between the two).
        orphan = os.path.join(server.blobDir, "data", f"{newUUID()}-0123456789ab")
        with open(orphan, "wb") as f:
            f.write(b"orphan")
    finally:
        for s in sockets:
            s.close()
        server.stop(signal.SIGKILL)

    again = startServer(dataDir)
    try:
        files = again.files()
        assert not [f for f in files if ".tmp-" in f], files
        assert os.path.relpath(orphan, again.blobDir) not in files
        assert len(files) == len(completed)
        assert "swept 3 dead claims, 3 temporary files and 1 unreferenced blobs" in again.log()
        assertRecovered(again, tmp_path, completed, interrupted)
    finally:
        again.stop()


def test_one_service_per_data_directory(server: Server, tmp_path: Path) -> None:
    """A second server on the data directory of a running one refuses to start."""
    with pytest.raises(RuntimeError) as e:
        # Should it start, it must not outlive the test.
        startServer(server.dataDir, logPath=str(tmp_path / "second.log")).stop()
    assert "is in use by pid" in str(e.value)
    assert "Traceback" not in str(e.value)


def test_sigkill_during_s3_uploads_then_restart(tmp_path, seaweedfs):
    """
    The same crash on S3: the dead process's multipart uploads stay in the
    bucket (it cannot abort them), and the next start aborts them, gives
    the uuids back, and keeps every completed blob.
    """
    dataDir = str(tmp_path / "data")
    args, env = seaweedfs.serverArgs(), seaweedfs.serverEnv()
    server = startServer(dataDir, *args, env=env)
    interrupted = [newUUID() for _ in range(3)]
    sockets = []

    def ours() -> list[str]:
        return [k for k in seaweedfs.uploads("data/") if k.split("/")[1][:36] in interrupted]

    try:
        completed = uploadSome(server, tmp_path, 2, 1024 * 1024 + 17)
        before = set(seaweedfs.objects("data/"))
        # Declared larger than one PUT: multipart uploads from the start.
        sockets = startUploads(server, interrupted)
        waitUntil(lambda: pending(server) == 3 and len(ours()) == 3, 20, "3 uploads in flight")
        server.kill()
        assert len(ours()) == 3
    finally:
        for s in sockets:
            s.close()
        server.stop(signal.SIGKILL)

    again = startServer(dataDir, *args, env=env)
    try:
        assert ours() == []
        assert set(seaweedfs.objects("data/")) == before
        assert "swept 3 dead claims" in again.log()
        assertRecovered(again, tmp_path, completed, interrupted)
    finally:
        again.stop()
