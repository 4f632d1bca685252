# -*- test-case-name: tests.integration.test_recovery,tests.integration.test_localstore -*-
"""
A data directory's lock and name, and the lock of a local store's blob
directory.

One process serves from a data directory at a time (its start-up sweep
takes everything unfinished there for a dead predecessor's), and the
directory's name, kept across restarts, marks the claims it makes.  A blob
directory elsewhere (C{--blob-dir}) is one node's alike, unless every node
on it says it shares it (C{--shared-blob-dir}).
"""

from __future__ import annotations

import fcntl
import os
import socket
import uuid
from typing import IO


class DataDirInUse(Exception):
    """Another process serves from this data directory."""


class BlobDirInUse(Exception):
    """Another node keeps this blob directory, or shares it when we would not."""


class DataDirLock:
    """
    An exclusive lock on a data directory for the life of the process: its
    start-up sweep assumes no other process writes there.  The kernel drops
    it when the process dies, however it dies.
    """

    def __init__(self, dataDir: str) -> None:
        self.path = os.path.join(dataDir, "morpheo-storage.lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            where = os.path.dirname(self.path)
            raise DataDirInUse(
                f"{where} is in use by {holder}: one service per data directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


#: Beside the blobs (no key starts with a dot).
BLOB_DIR_LOCK = ".morpheo-store.lock"
#: What the nodes sharing a blob directory say of themselves in its lock.
_SHARERS = "nodes started with --shared-blob-dir"


class BlobDirLock:
    """
    A lock on a local store's directory for the life of the process:
    exclusive for a node that keeps the directory for itself (its start-up
    sweep takes everything unfinished there for its own), shared among the
    nodes that all mount it with C{shared}; either kind keeps the other
    out.  (On NFS the client turns it into a lock on the server, seen by
    every host, unless the mount says C{nolock}.)  It blocks: take it in a
    thread.
    """

    def __init__(self, blobDir: str, shared: bool) -> None:
        self.directory = blobDir
        self.path = os.path.join(blobDir, BLOB_DIR_LOCK)
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another node"
            os.close(fd)
            if self.shared:
                raise BlobDirInUse(
                    f"{self.directory} is in use by {holder}, which keeps it for itself:"
                    " start every node on it with --shared-blob-dir"
                ) from None
            raise BlobDirInUse(
                f"{self.directory} is in use by {holder}: one node per blob directory, unless"
                " every node on it is started with --shared-blob-dir"
            ) from None
        # The sharers all write the same words: none clobbers another's.
        who = _SHARERS if self.shared else f"pid {os.getpid()} on {socket.gethostname()}"
        text = who.encode()
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def instanceName(dataDir: str) -> str:
    """
    This data directory's name in the claims it makes: the same across
    restarts, so a new run knows the claims of the run before it.
    """
    path = os.path.join(dataDir, "instance-id")
    try:
        with open(path) as f:
            ident = f.read().strip()
    except FileNotFoundError:
        ident = str(uuid.uuid4())
        os.makedirs(dataDir, exist_ok=True)
        with open(path, "w") as f:
            f.write(ident + "\n")
    return f"{socket.gethostname()}/{ident}"
