"""
A real Morpheo Storage server for the tests: C{twistd -n morpheo-storage}
in a subprocess, on a free port of 127.0.0.1, with its embedded PostgreSQL
under a temporary data directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid as _uuid
from typing import Any

import psycopg2
from attrs import define, field

USER = "tester"
PASSWORD = "s3cret-pass"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


@define
class Server:
    """A running server and what the tests need to look inside it."""

    process: subprocess.Popen[bytes]
    dataDir: str
    port: int
    logPath: str
    user: str = USER
    password: str = PASSWORD
    _db: Any = field(default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    @property
    def blobDir(self) -> str:
        return os.path.join(self.dataDir, "blobs")

    def dsn(self) -> str:
        """The embedded PostgreSQL's socket, read from its pid file."""
        with open(os.path.join(self.dataDir, "postgres", "postmaster.pid")) as f:
            lines = f.read().splitlines()
        return f"host={lines[4]} port={lines[3]} user=postgres dbname=morpheo_storage"

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query on the server's database (autocommit)."""
        if self._db is None or self._db.closed:
            self._db = psycopg2.connect(self.dsn())
            self._db.autocommit = True
        with self._db.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []

    def files(self) -> list[str]:
        """Every file under the blob directory, relative to it."""
        found = []
        for dirpath, _, names in os.walk(self.blobDir):
            for name in names:
                found.append(os.path.relpath(os.path.join(dirpath, name), self.blobDir))
        return sorted(found)

    def peakRSS(self) -> int:
        """The server process's peak resident set (VmHWM), in bytes."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def log(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def startServer(
    dataDir: str, *extra: str, port: int = 0, env: dict[str, str] | None = None
) -> Server:
    """Start a server and wait until it listens (or fail with its log)."""
    os.makedirs(dataDir, exist_ok=True)
    logPath = os.path.join(dataDir, "twistd.log")
    args = [
        TWISTD,
        "-n",
        "--pidfile=",
        "morpheo-storage",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--data-dir",
        dataDir,
        *extra,
    ]
    log = open(logPath, "wb")
    process = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=dataDir,
    )
    deadline = time.monotonic() + 90
    pattern = re.compile(r"listening on http://[\d.]+:(\d+)/")
    while time.monotonic() < deadline:
        with open(logPath, encoding="utf-8", errors="replace") as f:
            text = f.read()
        m = pattern.search(text)
        if m:
            return Server(process, dataDir, int(m.group(1)), logPath)
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{text}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not start in time:\n{open(logPath).read()}")


def bigRoundTrip(server: Server, path: str, sha: str, size: int) -> str:
    """
    Upload the file at C{path} with C{curl -F}, download it with curl, and
    check both sides' sha256 without holding it in memory; the uuid.
    """
    auth = f"{server.user}:{server.password}"
    uuid = str(_uuid.uuid4())
    up = subprocess.run(
        ["curl", "-sS", "-u", auth, "-F", f"uuid={uuid}", "-F", f"size={size}",
         "-F", f"blob=@{path}", f"{server.url}/data"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert f'"sha256": "{sha}"' in up.stdout, up
    digest = hashlib.sha256()
    received = 0
    command = ["curl", "-sS", "-D", "-", "-u", auth, f"{server.url}/data/{uuid}/blob"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as down:
        assert down.stdout is not None
        head = b""
        while b"\r\n\r\n" not in head:
            head += down.stdout.read(1)
        assert f"Content-Length: {size}".encode() in head
        while chunk := down.stdout.read(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == sha
    return uuid
