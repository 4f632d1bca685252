# -*- test-case-name: tests.unit.test_bench -*-
"""
The server's memory under load on the local store: many form uploads at
once (C{--load-count} of C{--load-mib} MiB), then as many downloads at once,
each from its own thread and connection, every byte's sha256 checked on both
sides.  Each run starts a fresh server, since the peak resident memory
(VmHWM) is a process's whole life; VmRSS is also sampled while uploading and
while downloading.
"""

from __future__ import annotations

import os
import threading

from bench._common import Figure, peakRSS, statusBytes, tree
from bench._context import Bench
from tests.integration.helpers import Load


class RSSSampler:
    """The highest VmRSS of a process tree (summed), sampled in a thread until stopped."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in tree(self.pid):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        total += statusBytes(f.read(), "VmRSS")
                except (OSError, ValueError):
                    pass  # gone, or a zombie
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join()


def load(bench: Bench, workers: int) -> list[Figure]:
    """The memory section, for C{workers} workers."""
    count, size = bench.settings.loadCount, bench.settings.loadMiB * 1024 * 1024
    samples: dict[str, list[float]] = {
        k: [] for k in ("idle", "peak", "peak up", "peak down", "up", "down")
    }
    for run in range(bench.settings.runs):
        bench.say(f"memory, {count} x {size >> 20} MiB, workers {workers}, run {run + 1}")
        os.sync()
        with bench.server(workers) as server:
            samples["idle"].append(peakRSS(server.process.pid) / 1e6)
            work = Load(server, count, size)
            with RSSSampler(server.process.pid) as uploading:
                up = work.uploads()
            with RSSSampler(server.process.pid) as downloading:
                down = work.downloads()
            samples["peak"].append(peakRSS(server.process.pid) / 1e6)
        samples["peak up"].append(uploading.peak / 1e6)
        samples["peak down"].append(downloading.peak / 1e6)
        samples["up"].append(work.mbps(up))
        samples["down"].append(work.mbps(down))
    what = f"{count} x {bench.settings.loadMiB} MiB at once"
    return [
        Figure(f"{what}: peak RSS", "MB", workers, samples["peak"]),
        Figure("idle server: peak RSS", "MB", workers, samples["idle"]),
        Figure(f"{what}: RSS sampled uploading", "MB", workers, samples["peak up"]),
        Figure(f"{what}: RSS sampled downloading", "MB", workers, samples["peak down"]),
        Figure(f"{what}: upload", "MB/s", workers, samples["up"]),
        Figure(f"{what}: download", "MB/s", workers, samples["down"]),
    ]
