# -*- test-case-name: tests.unit.test_bench -*-
"""
What a run of the benchmark holds for its sections: its settings, a work
directory, the big blob (made once), the object stores (started once, at
the first section that needs them), the servers under test (a fresh one
per section and worker count, with C{--workers} when the server has it),
and the log of progress on stderr.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from attrs import define, field

from bench._common import hasOption, makeBlob
from tests.integration.servers import TWISTD, FakeGCS, SeaweedFS, Server, startServer


@define
class Settings:
    """The command line, as the sections read it."""

    runs: int
    sizeMiB: int
    #: Seconds of each wrk run, and its connections.
    duration: float
    connections: int
    #: The memory section: how many uploads at once, of how many MiB.
    loadCount: int
    loadMiB: int


def serverHelp() -> str:
    """What C{twistd morpheo-storage --help} says."""
    return subprocess.run(
        [TWISTD, "morpheo-storage", "--help"], capture_output=True, text=True, check=False
    ).stdout


def _workDirectory() -> str:
    """A new work directory that nginx's unprivileged workers can go through."""
    work = tempfile.mkdtemp(prefix="morpheo-bench-")
    os.chmod(work, 0o755)
    return work


@define
class Bench:
    """One run of the benchmark; close it to stop and remove all it started."""

    settings: Settings
    work: str = field(factory=lambda: _workDirectory())
    began: float = field(factory=time.monotonic)
    _stack: contextlib.ExitStack = field(factory=contextlib.ExitStack)
    _blob: str | None = None
    _seaweedfs: SeaweedFS | None = None
    _gcs: FakeGCS | None = None
    _workers: bool | None = None

    @property
    def size(self) -> int:
        return self.settings.sizeMiB * 1024 * 1024

    def say(self, text: str) -> None:
        """A line of progress, on stderr, with the time since the start."""
        print(f"[{time.monotonic() - self.began:5.0f} s] {text}", file=sys.stderr, flush=True)

    def directory(self, name: str) -> str:
        """A new directory under the work directory."""
        return tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)

    def blob(self) -> str:
        """The path of the big blob, of C{--size-mib} MiB."""
        if self._blob is None:
            self._blob = os.path.join(self.work, "blob.bin")
            makeBlob(self._blob, self.size)
        return self._blob

    def seaweedfs(self) -> SeaweedFS:
        """The S3 store, started at the first call."""
        if self._seaweedfs is None:
            # Room for every blob of the run: a full volume makes the next
            # write wait for a new one, in the middle of a measure.
            volume = max(1024, 4 * self.settings.sizeMiB * self.settings.runs)
            self.say("starting SeaweedFS")
            self._seaweedfs = self._stack.enter_context(SeaweedFS(volumeSizeMB=volume))
        return self._seaweedfs

    def gcs(self) -> FakeGCS:
        """The Google Cloud Storage emulator, started at the first call."""
        if self._gcs is None:
            self.say("starting fake-gcs-server")
            self._gcs = self._stack.enter_context(FakeGCS())
        return self._gcs

    def hasWorkers(self) -> bool:
        """Whether this server takes C{--workers}."""
        if self._workers is None:
            self._workers = hasOption(serverHelp(), "--workers")
        return self._workers

    def canRun(self, workers: int) -> bool:
        """Whether a server of C{workers} workers can be started."""
        return workers == 1 or self.hasWorkers()

    @contextlib.contextmanager
    def server(
        self, workers: int, store: SeaweedFS | FakeGCS | None = None, *args: str
    ) -> Iterator[Server]:
        """A fresh server on the local store, or on C{store}, for one section."""
        if not self.canRun(workers):
            raise RuntimeError(f"this server has no --workers: cannot run {workers}")
        options = ["--workers", str(workers)] if self.hasWorkers() else []
        env = {}
        if store is not None:
            options += store.serverArgs()
            env = store.serverEnv()
        dataDir = self.directory("server")
        server = startServer(dataDir, *options, *args, env=env)
        try:
            yield server
        except Exception:
            # Its directory goes with it: what it said goes to stderr first.
            self.say(f"the server's log ended so:\n{server.log()[-4000:]}")
            raise
        finally:
            server.stop()
            shutil.rmtree(dataDir, ignore_errors=True)

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
