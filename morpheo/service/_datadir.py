# -*- test-case-name: tests.integration.test_recovery -*-
"""
A data directory's lock and name.

One process serves from a data directory at a time (its start-up sweep
takes everything unfinished there for a dead predecessor's), and the
directory's name, kept across restarts, marks the claims it makes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import uuid
from typing import IO


class DataDirInUse(Exception):
    """Another process serves from this data directory."""


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
