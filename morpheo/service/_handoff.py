# -*- test-case-name: tests.unit.test_workers,tests.integration.test_workers -*-
"""
What the parent of C{--workers} hands each worker process: which worker it
is, the database to use (started and migrated by the parent), the name its
claims go by, the listening sockets to serve (inherited descriptors), and
where to say it is ready.

It comes on the worker's standard input, as one JSON object, which the
parent writes and closes at once: a password generated for the run or the
database's password never appear in a process listing or its environment.
L{WORKER_ENV} in the environment says that the process is a worker.
"""

from __future__ import annotations

import json
import os
from typing import Any

from attrs import asdict, evolve, field, frozen

from ._config import StorageConfig

#: Set (to C{1}) in a worker's environment: its standard input holds its handoff.
WORKER_ENV = "MORPHEO_STORAGE_WORKER"
#: What a worker writes on its status descriptor once it serves.
READY = b"ready\n"


class HandoffError(Exception):
    """A worker's standard input did not hold a handoff."""


@frozen
class WorkerHandoff:
    """
    One worker's part of the run: C{index} of C{count}, the C{parentPid}
    it stops without, its C{owner} name for claims (the parent's name and
    C{/wINDEX}: the same for its replacements, so that one takes over
    exactly the claims of the worker it replaces), the database's C{dsn},
    the C{listenFDs} in the order of the configured listeners, the
    C{statusFD} to write L{READY} on, and the run's C{metricsDirectory}.
    """

    index: int
    count: int
    parentPid: int
    owner: str
    dsn: str = field(repr=False)
    listenFDs: tuple[int, ...]
    statusFD: int
    metricsDirectory: str
    #: The password generated for the run, if the parent made one up.
    password: str | None = field(default=None, repr=False)

    def toJSON(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    @classmethod
    def fromJSON(cls, data: bytes) -> WorkerHandoff:
        try:
            fields: dict[str, Any] = json.loads(data)
            fields["listenFDs"] = tuple(fields["listenFDs"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError) as e:
            raise HandoffError(f"not a worker's handoff: {e}") from None

    def configure(self, config: StorageConfig) -> StorageConfig:
        """C{config} (this worker's command line, as its parent's) for this worker."""
        password = self.password if config.generatedPassword else config.password
        return evolve(
            config,
            worker=self.index,
            metricsDirectory=self.metricsDirectory,
            password=password,
        )

    def ready(self) -> None:
        """Tell the parent this worker serves."""
        os.write(self.statusFD, READY)


def readHandoff() -> WorkerHandoff | None:
    """
    In a worker (L{WORKER_ENV} set), its handoff, read from its standard
    input to the end; None in any other process.
    """
    if os.environ.get(WORKER_ENV) != "1":
        return None
    chunks = []
    while chunk := os.read(0, 65536):
        chunks.append(chunk)
    # Nothing else is read from it.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return WorkerHandoff.fromJSON(b"".join(chunks))


def workerOwner(owner: str, index: int) -> str:
    """The claims' owner name of worker C{index} of the process named C{owner}."""
    return f"{owner}/w{index}"


__all__ = ["READY", "WORKER_ENV", "HandoffError", "WorkerHandoff", "readHandoff", "workerOwner"]
