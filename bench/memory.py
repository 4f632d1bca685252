"""
Benchmark: the server's memory under load on the local blob store.  Many
form uploads at once (64 of 64 MiB by default), then as many downloads at
once, each from its own thread and connection, every byte's sha256 checked
on both sides.

    python bench/memory.py [--count 64] [--size-mib 64] [--runs 3]

Each run starts a fresh server (the peak resident memory, VmHWM, is a
process's whole life) and prints its peak RSS, the peak RSS seen while
uploading and while downloading (VmRSS sampled every 20 ms), and the MB/s
of each phase; then the medians over the runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.integration.helpers import Load  # noqa: E402
from tests.integration.servers import Server, startServer  # noqa: E402


class RSSSampler:
    """The highest VmRSS of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(self.every)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join()


def oneRun(work: str, count: int, size: int) -> dict[str, float]:
    server: Server = startServer(os.path.join(work, "server"))
    try:
        idle = server.peakRSS()
        load = Load(server, count, size)
        with RSSSampler(server.process.pid) as uploading:
            up = load.uploads()
        with RSSSampler(server.process.pid) as downloading:
            down = load.downloads()
        peak = server.peakRSS()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "idle": idle / 1e6,
        "peak": peak / 1e6,
        "peak up": uploading.peak / 1e6,
        "peak down": downloading.peak / 1e6,
        "up": load.mbps(up),
        "down": load.mbps(down),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    results: list[dict[str, float]] = []
    for number in range(args.runs):
        os.sync()
        began = time.monotonic()
        result = oneRun(tempfile.mkdtemp(prefix="morpheo-bench-"), args.count, size)
        results.append(result)
        print(
            f"run {number + 1}: peak RSS {result['peak']:.1f} MB (idle {result['idle']:.1f},"
            f" uploading {result['peak up']:.1f}, downloading {result['peak down']:.1f}),"
            f" upload {result['up']:.0f} MB/s, download {result['down']:.0f} MB/s"
            f" ({time.monotonic() - began:.0f} s)",
            flush=True,
        )
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"{args.count} x {args.size_mib} MiB, {args.runs} runs, medians; {os.cpu_count()} cores")
    print(
        f"server peak RSS (VmHWM): {med['peak']:.1f} MB   idle: {med['idle']:.1f} MB"
        f"   sampled uploading: {med['peak up']:.1f} MB   downloading: {med['peak down']:.1f} MB"
    )
    print(f"upload   (all at once, sha256 checked): {med['up']:8.0f} MB/s")
    print(f"download (all at once, sha256 checked): {med['down']:8.0f} MB/s")


if __name__ == "__main__":
    main()
