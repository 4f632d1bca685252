"""
What the benchmarks share: their command line, timed curl transfers, MB/s,
a test blob.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile


def setUp(description: str, runs: int) -> tuple[argparse.Namespace, int, str, str]:
    """
    The command line (C{--size-mib}, C{--runs}), the blob's size, a work
    directory (for the caller to remove) and a blob of that size in it.
    """
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=runs)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    work = tempfile.mkdtemp(prefix="morpheo-bench-")
    blob = os.path.join(work, "blob.bin")
    makeBlob(blob, size)
    return args, size, work, blob


def curl(*args: str) -> float:
    """Run curl, return its transfer time in seconds."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[0] not in ("200", "201", "204"):
        raise RuntimeError(f"curl {args}: HTTP {out[0]}")
    return float(out[1])


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def makeBlob(path: str, size: int) -> None:
    """C{size} bytes (a multiple of 1 MiB) that do not compress."""
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            f.write(block[i % 1024 :] + block[: i % 1024])
