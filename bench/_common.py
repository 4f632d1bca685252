# -*- test-case-name: tests.unit.test_bench -*-
"""
What the sections of the benchmark share: the figures and their table,
medians and ratios, timed curl transfers, the CPU time and peak memory of
process trees read from /proc, a test blob, and whether the server takes
C{--workers}.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import uuid
from collections.abc import Iterable, Sequence

import psutil  # type: ignore[import-untyped]
from attrs import field, frozen

from tests.integration.servers import Server

#: How a ratio is shown beside its goal.
NA = "n/a"


def median(samples: Sequence[float]) -> float:
    """The median of C{samples}; NaN when there are none."""
    return statistics.median(samples) if samples else float("nan")


def ratio(value: float, reference: float) -> float:
    """C{value} over C{reference}; NaN when either is missing or zero."""
    if not reference or value != value or reference != reference:
        return float("nan")
    return value / reference


def floats(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(values)


@frozen
class Figure:
    """
    One line of the table: the service's samples of a measure, the
    reference's samples of the same measure run beside it (if any), and
    the least ratio of the two that the project aims for (if any).
    """

    name: str
    unit: str
    workers: int
    samples: tuple[float, ...] = field(converter=floats, default=())
    reference: str = ""
    referenceSamples: tuple[float, ...] = field(converter=floats, default=())
    goal: float | None = None
    #: Said instead of the figures (C{n/a: ...}) or beside them.
    note: str = ""

    @property
    def value(self) -> float:
        return median(self.samples)

    @property
    def referenceValue(self) -> float:
        return median(self.referenceSamples)

    @property
    def ratio(self) -> float:
        """
        The median of each run's ratio when the two sides were measured run
        for run (moments apart, under the same load), else the medians' ratio.
        """
        if len(self.samples) != len(self.referenceSamples):
            return ratio(self.value, self.referenceValue)
        return median(
            [ratio(a, b) for a, b in zip(self.samples, self.referenceSamples, strict=True)]
        )

    @property
    def met(self) -> str:
        """C{yes} or C{no} against the goal; empty without a goal or a ratio."""
        if self.goal is None or self.ratio != self.ratio:
            return ""
        return "yes" if self.ratio >= self.goal else "no"


def number(value: float) -> str:
    """A figure as the table shows it: thousands separated, 3 significant digits below 100."""
    if value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


COLUMNS = ("figure", "workers", "service", "reference", "ref. value", "ratio", "goal", "met")


def table(figures: Iterable[Figure]) -> str:
    """The figures as one aligned text table, a line each."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for f in figures:
        if f.note.startswith(NA):
            rows.append((f.name, str(f.workers), f.note, "", "", "", "", ""))
            continue
        service = f"{number(f.value)} {f.unit}"
        if f.note:
            service += f" ({f.note})"
        rows.append(
            (
                f.name,
                str(f.workers),
                service,
                f.reference,
                f"{number(f.referenceValue)} {f.unit}" if f.referenceSamples else "",
                f"{f.ratio:.2f}" if f.ratio == f.ratio else "",
                f">={f.goal:.2f}" if f.goal is not None else "",
                f.met,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def runs(figures: Iterable[Figure]) -> str:
    """Every sample behind the medians: a line per measure, then one per reference of it."""
    lines: list[str] = []
    seen: set[tuple[str, int, tuple[float, ...]]] = set()
    for f in figures:
        if not f.samples:
            continue
        if (f.name, f.workers, f.samples) not in seen:
            seen.add((f.name, f.workers, f.samples))
            lines.append(f"{f.name}, workers {f.workers}: {_samples(f.samples, f.unit)}")
        if f.referenceSamples:
            lines.append(f"    {f.reference}: {_samples(f.referenceSamples, f.unit)}")
    return "\n".join(lines)


def _samples(samples: Sequence[float], unit: str) -> str:
    return ", ".join(number(x) for x in samples) + f" {unit}"


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


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


def credentials(server: Server) -> str:
    """A server's Basic credentials, as curl's C{-u} takes them."""
    return f"{server.user}:{server.password}"


def upload(server: Server, path: str, size: int) -> tuple[str, float]:
    """The file up as a data object (C{curl -F}); its uuid and the seconds it took."""
    u = str(uuid.uuid4())
    form = ["-F", f"uuid={u}", "-F", f"size={size}", "-F", f"blob=@{path}"]
    return u, curl("-u", credentials(server), *form, f"{server.url}/data")


def makeBlob(path: str, size: int) -> None:
    """C{size} bytes (a multiple of 1 MiB) that do not compress."""
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            f.write(block[i % 1024 :] + block[: i % 1024])


def statCPU(stat: str, ticks: int) -> float:
    """User and system seconds from the text of a C{/proc/PID/stat}."""
    # The command name, in parentheses, may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    # utime and stime, the 14th and 15th fields counting from the pid.
    return (int(fields[11]) + int(fields[12])) / ticks


def statusBytes(status: str, key: str) -> int:
    """A C{kB} line of a C{/proc/PID/status} (C{VmHWM}, C{VmRSS}) in bytes."""
    match = re.search(rf"^{key}:\s+(\d+) kB$", status, re.M)
    if match is None:
        raise ValueError(f"no {key} line")
    return int(match.group(1)) * 1024


def tree(pid: int) -> list[int]:
    """C{pid} and all its descendants now (a server's workers)."""
    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _read(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None  # gone since it was listed


def cpuSeconds(pids: Iterable[int]) -> float:
    """The CPU time the trees of C{pids} have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for root in pids:
        for pid in tree(root):
            if (text := _read(pid, "stat")) is not None:
                total += statCPU(text, ticks)
    return total


def childrenCPU() -> float:
    """The CPU time of the children this process has waited for (curl, wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peakRSS(pid: int) -> int:
    """The peak resident memory (VmHWM) of C{pid}'s tree, summed over its processes."""
    total = 0
    for one in tree(pid):
        if (text := _read(one, "status")) is not None:
            total += statusBytes(text, "VmHWM")
    return total


def postmaster(dataDir: str) -> list[int]:
    """The embedded PostgreSQL of a server's data directory (its own tree), if running."""
    try:
        with open(os.path.join(dataDir, "postgres", "postmaster.pid")) as f:
            return [int(f.readline())]
    except (OSError, ValueError):
        return []


def hasOption(helpText: str, option: str) -> bool:
    """Whether a C{--help} text lists C{option} (as C{--option} or C{--option=})."""
    return re.search(rf"^\s*(-\w, )?{re.escape(option)}(=|\s|$)", helpText, re.M) is not None
