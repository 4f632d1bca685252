"""
The benchmark's own arithmetic and parsing, without running anything:
medians and ratios, the table, C{/proc} and wrk's output, the command line,
and whether a server's help offers an option.
"""

from __future__ import annotations

import math

import pytest

from bench.__main__ import parser, settings
from bench._common import NA, Figure, hasOption, median, number, ratio, statCPU, statusBytes, table
from bench._refs import missing
from bench._wrk import parse, script


def test_median_and_ratio() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))
    assert ratio(50.0, 200.0) == 0.25
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(float("nan"), 1.0))


def test_figure_against_its_goal() -> None:
    met = Figure("4 KB GET", "req/s", 2, [900, 1000, 1100], "SeaweedFS", [2000, 1800, 2200], 0.5)
    assert (met.value, met.referenceValue, met.ratio, met.met) == (1000, 2000, 0.5, "yes")
    missed = Figure("down", "MB/s", 1, [80], "nginx", [100], 0.9)
    assert missed.met == "no"
    assert Figure("RSS", "MB", 1, [70]).met == ""
    assert Figure("no reference", "MB/s", 1, [70], "nginx", [], 0.9).met == ""


def test_ratio_run_for_run() -> None:
    """Each run's two sides met the same load: the ratio is the median of theirs."""
    noisy = Figure("up", "MB/s", 1, [300, 100, 330], "limit", [390, 85, 270])
    assert noisy.ratio == pytest.approx(100 / 85)
    assert noisy.value / noisy.referenceValue == pytest.approx(300 / 270)
    # A measure with one sample beside a reference with three: the medians' ratio.
    assert Figure("x", "ms", 1, [2.0], "y", [1.0, 4.0, 5.0]).ratio == 0.5


def test_table() -> None:
    lines = table(
        [
            Figure("local download", "MB/s", 1, [1077.4], "nginx GET", [1724], 0.9),
            Figure("CPU", "ms", 1, [0.5], "SeaweedFS", [0.25], note="+0.10 ms PostgreSQL"),
            Figure("small requests", "", 2, note=f"{NA}: no --workers"),
        ]
    ).splitlines()
    assert lines[0].split() == [
        "figure", "workers", "service", "reference", "ref.", "value", "ratio", "goal", "met",
    ]  # fmt: skip
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == [
        "local", "download", "1", "1,077", "MB/s", "nginx", "GET", "1,724", "MB/s", "0.62",
        ">=0.90", "no",
    ]  # fmt: skip
    assert "0.5 ms (+0.10 ms PostgreSQL)" in lines[3] and lines[3].endswith("2.00")
    assert lines[4].split() == ["small", "requests", "2", "n/a:", "no", "--workers"]
    # Aligned: every column starts where its heading does.
    start = lines[0].index("service")
    assert lines[2][start - 2 : start] == "  " and lines[2][start] == "1"


def test_numbers() -> None:
    assert [number(x) for x in (24000.4, 355.0, 94.26, 0.1234, float("nan"))] == [
        "24,000", "355", "94.3", "0.123", "-",
    ]  # fmt: skip


def test_proc_stat() -> None:
    # The command name may hold spaces and parentheses; utime 250, stime 50.
    stat = "4242 (twistd (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0"
    assert statCPU(stat, 100) == 3.0


def test_proc_status() -> None:
    status = "Name:\ttwistd\nVmPeak:\t  300000 kB\nVmHWM:\t   71234 kB\nVmRSS:\t   60000 kB\n"
    assert statusBytes(status, "VmHWM") == 71234 * 1024
    assert statusBytes(status, "VmRSS") == 60000 * 1024
    with pytest.raises(ValueError):
        statusBytes("Name:\tzombie\n", "VmHWM")


def test_has_option() -> None:
    help = (
        "Options:\n"
        "      --user=           The user.\n"
        "  -w, --workers=        Processes serving requests. [default: 1]\n"
        "      --help            Display this help and exit.\n"
        "      --workers-dir=    Not it.\n"
    )
    assert hasOption(help, "--workers")
    assert hasOption(help, "--help")
    assert not hasOption(help.replace("-w, --workers=", "--threads="), "--workers")
    assert not hasOption("      --user=  See --workers= elsewhere.\n", "--workers")


def test_wrk_script() -> None:
    lua = script("POST", {"Authorization": "Basic dDpw"}, "/tmp/form.bin")
    assert 'wrk.method = "POST"' in lua
    assert 'wrk.headers["Authorization"] = "Basic dDpw"' in lua
    assert 'io.open("/tmp/form.bin", "rb")' in lua
    assert "done = function(summary, latency, requests)" in lua
    assert "wrk.body" not in script("GET", {}, None)
    with pytest.raises(ValueError):
        script("GET", {"X": "caf\u00e9"}, None)


def test_wrk_output() -> None:
    output = (
        "Running 5s test @ http://127.0.0.1:1/health\n"
        "  2 threads and 16 connections\n"
        "  Non-2xx or 3xx responses: 7\n"
        '{"requests": 1007, "duration_us": 5000000, "connect": 0, "read": 0, "write": 0,'
        ' "status": 7, "timeout": 0}\n'
    )
    counted = parse(output)
    assert (counted.requests, counted.seconds, counted.errors) == (1007, 5.0, 7)
    assert counted.rate == 200.0
    with pytest.raises(ValueError):
        parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_quick_and_given_settings() -> None:
    quick = settings(parser().parse_args(["--quick", "--runs", "2"]))
    assert (quick.runs, quick.sizeMiB, quick.duration) == (2, 256, 2.0)
    full = settings(parser().parse_args(["--size-mib", "512"]))
    assert (full.runs, full.sizeMiB, full.duration, full.connections) == (3, 512, 5.0, 16)
    assert parser().parse_args(["--workers", "1,4"]).workers == [1, 4]
    with pytest.raises(SystemExit):
        parser().parse_args(["--only", "nothing"])


def test_missing_tools_name_their_packages(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing({"wrk", "nginx", "dd"}) == ["coreutils", "nginx", "wrk"]
    (tmp_path / "wrk").write_text("#!/bin/sh\n")
    (tmp_path / "wrk").chmod(0o755)
    assert missing({"wrk", "nginx"}) == ["nginx"]
