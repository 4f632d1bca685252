# -*- test-case-name: tests.unit.test_bench -*-
"""
The benchmark: every figure of the service beside its reference, run on
the same machine at the same time, as one table of medians and ratios.

    python -m bench [--quick] [--runs N] [--size-mib N] [--only SECTION]...

Each section runs with one worker and with one per core (C{--workers}, when
the server has that option); progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen

from bench._common import NA, Figure, runs, table
from bench._context import Bench, Settings
from bench._load import load
from bench._refs import missing
from bench._requests import requests
from bench._transfers import gcs, local, s3


@frozen
class Section:
    run: Callable[[Bench, int], list[Figure]]
    #: The programs it runs, beside the server.
    tools: frozenset[str]
    what: str
    #: Whether it runs without C{--only}.
    byDefault: bool = True


SECTIONS = {
    "local": Section(local, frozenset({"curl", "nginx", "openssl", "dd"}), "big blob, local store"),
    "s3": Section(s3, frozenset({"curl"}), "big blob, S3 store"),
    "gcs": Section(gcs, frozenset({"curl"}), "big blob, GCS store", byDefault=False),
    "small": Section(requests, frozenset({"curl", "wrk", "nginx"}), "small requests"),
    "memory": Section(load, frozenset(), "memory under load"),
}

#: What C{--quick} changes, unless given on the command line.
QUICK: dict[str, float] = {
    "runs": 1, "size_mib": 256, "duration": 2.0, "load_count": 16, "load_mib": 16,
}  # fmt: skip
DEFAULTS: dict[str, float] = {
    "runs": 3, "size_mib": 1024, "duration": 5.0, "load_count": 64, "load_mib": 32,
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").strip().split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="fewer and smaller runs (a few minutes)")
    p.add_argument("--runs", type=int, help="runs of each measure, for medians (default 3)")
    p.add_argument("--size-mib", type=int, help="the big blob's size (default 1024)")
    p.add_argument("--duration", type=float, help="seconds of each wrk run (default 5)")
    p.add_argument("--connections", type=int, default=16, help="wrk's connections (default 16)")
    p.add_argument("--load-count", type=int, help="memory: uploads at once (default 64)")
    p.add_argument("--load-mib", type=int, help="memory: each upload's size in MiB (default 32)")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        help="only this section (repeatable; gcs runs only so)",
    )
    p.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=sorted({1, os.cpu_count() or 1}),
        help="worker counts to run each section with, comma-separated (default: 1,CORES)",
    )
    return p


def settings(args: argparse.Namespace) -> Settings:
    """The settings: those given, else the quick ones with C{--quick}, else the defaults."""

    def chosen(name: str) -> Any:
        given = getattr(args, name)
        return given if given is not None else (QUICK if args.quick else DEFAULTS)[name]

    return Settings(
        runs=chosen("runs"),
        sizeMiB=chosen("size_mib"),
        duration=chosen("duration"),
        connections=args.connections,
        loadCount=chosen("load_count"),
        loadMiB=chosen("load_mib"),
    )


def heading(bench: Bench, names: Sequence[str], workers: Sequence[int]) -> str:
    """What was run, where and how, above the table."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    s = bench.settings
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"morpheo-storage bench, commit {commit or '?'}, {when}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}\n"
        f"sections {', '.join(names)}; workers {', '.join(map(str, workers))}; "
        f"medians of {s.runs} runs; big blob {s.sizeMiB} MiB; wrk {s.connections} connections "
        f"x {s.duration:g} s; memory {s.loadCount} x {s.loadMiB} MiB; "
        f"ratio = the median of the runs' service / reference"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = args.only or [name for name, section in SECTIONS.items() if section.byDefault]
    lacking = missing(set().union(*(SECTIONS[name].tools for name in names)))
    if lacking:
        print(
            f"python -m bench needs {', '.join(lacking)} on the PATH for its references:"
            f" apt-get install -y {' '.join(lacking)} (or choose sections with --only)",
            file=sys.stderr,
        )
        return 2
    bench = Bench(settings(args))
    figures: list[Figure] = []
    try:
        for name in names:
            section = SECTIONS[name]
            for workers in args.workers:
                if not bench.canRun(workers):
                    figures.append(Figure(section.what, "", workers, note=f"{NA}: no --workers"))
                    continue
                try:
                    figures += section.run(bench, workers)
                except Exception:
                    traceback.print_exc()
                    figures.append(Figure(section.what, "", workers, note=f"{NA}: failed (stderr)"))
    finally:
        bench.close()
    print(heading(bench, names, args.workers))
    print()
    print(table(figures))
    print()
    print("every run:")
    print(runs(figures))
    print(f"\n{time.monotonic() - bench.began:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
