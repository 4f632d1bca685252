"""
What the benchmarks share: timed curl transfers, MB/s, a test blob.
"""

from __future__ import annotations

import os
import subprocess


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
