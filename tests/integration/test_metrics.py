"""
The metrics of a real twistd, scraped with curl and parsed with
prometheus_client's parser: C{/metrics} behind the credentials by default,
or on C{--metrics-listen}'s endpoint without them (and then not on the
main listener); counters moving with real requests, the database pool's
gauges, and a database call that timed out for real (its table locked)
counted as such.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import psycopg2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.python import usage

from morpheo.tap import Options
from tests.integration.helpers import curl
from tests.integration.servers import Server, startServer, waitUntil
from tests.integration.test_workers import ACCESS_WORKER, untilBothAnswer, workers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SERVING = re.compile(r"serving the metrics at (\S+)")


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metricsURL(server: Server) -> str:
    [url] = SERVING.findall(server.log())
    return str(url)


def scrapeApart(server: Server) -> Samples:
    done = curl("-sS", "-f", metricsURL(server))
    assert done.returncode == 0, done.stderr
    return parse(done.stdout)


def authed(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return curl("-sS", "-u", f"{server.user}:{server.password}", *args)


@pytest.fixture
def apart(tmp_path: Path):
    server = startServer(
        str(tmp_path / "data"), "--metrics-listen", "tcp:0:interface=127.0.0.1", "--db-timeout", "1"
    )
    yield server
    server.stop()


def test_metrics_apart_count_real_requests_without_credentials(apart: Server, tmp_path) -> None:
    blob = tmp_path / "blob.bin"
    data = os.urandom(200_000)
    blob.write_bytes(data)
    up = authed(apart, "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-F", "name=m",
                "-F", f"size={len(data)}", "-F", f"blob=@{blob}", f"{apart.url}/algo")  # fmt: skip
    code, sent = up.stdout.split()
    assert code == "201"
    [uuid] = [r[0] for r in apart.sql("SELECT uuid::text FROM resource")]
    down = subprocess.run(
        ["curl", "-sS", "-u", f"{apart.user}:{apart.password}", f"{apart.url}/algo/{uuid}/blob"],
        capture_output=True,
        timeout=60,
    )
    assert hashlib.sha256(down.stdout).digest() == hashlib.sha256(data).digest()
    assert (
        authed(
            apart, "-o", "/dev/null", "-w", "%{http_code}", f"{apart.url}/no/such/route/here"
        ).stdout
        == "404"
    )
    samples = scrapeApart(apart)
    total = "morpheo_http_requests_total"
    assert value(samples, total, method="POST", route="/{kind}", status="201") == 1
    assert value(samples, total, method="GET", route="/{kind}/{uuid}/blob", status="200") == 1
    assert value(samples, total, method="GET", route="unmatched", status="404") == 1
    assert value(samples, "morpheo_http_received_bytes_total") == int(sent)
    assert value(samples, "morpheo_http_sent_bytes_total") >= len(data)
    assert value(samples, "morpheo_transfer_duration_seconds_count", direction="upload") == 1
    assert value(samples, "morpheo_transfer_duration_seconds_count", direction="download") == 1
    assert value(samples, "morpheo_transfers_in_flight", direction="upload") == 0
    assert value(samples, "morpheo_db_pool_size") == 4
    assert value(samples, "morpheo_db_pool_in_use") == 0
    # Not on the main listener, with or without credentials.
    here = authed(apart, "-o", "/dev/null", "-w", "%{http_code}", f"{apart.url}/metrics")
    assert here.stdout == "404"
    # Only /metrics there.
    other = curl(
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        metricsURL(apart)[: -len("metrics")] + "problem",
    )
    assert other.stdout == "404"


def test_a_database_call_that_times_out_is_counted(apart: Server) -> None:
    """The table locked by another session: the list waits --db-timeout, then 503."""
    locker = psycopg2.connect(apart.dsn())
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE resource IN ACCESS EXCLUSIVE MODE")
            listed = authed(apart, "-o", "/dev/null", "-w", "%{http_code}", f"{apart.url}/problem")
            assert listed.stdout == "503"
    finally:
        locker.rollback()
        locker.close()
    samples = scrapeApart(apart)
    assert value(samples, "morpheo_db_errors_total", kind="timeout") == 1
    assert value(samples, "morpheo_db_errors_total", kind="query") == 0
    total = "morpheo_http_requests_total"
    assert value(samples, total, method="GET", route="/{kind}", status="503") == 1


def test_metrics_on_the_main_listener_need_the_credentials(server: Server) -> None:
    refused = curl("-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/metrics")
    assert refused.stdout == "401"
    wrong = curl(
        "-sS",
        "-u",
        "tester:wrong",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{server.url}/metrics",
    )
    assert wrong.stdout == "401"
    page = authed(server, "-f", f"{server.url}/metrics")
    assert page.returncode == 0, page.stderr
    samples = parse(page.stdout)
    assert value(samples, "morpheo_login_failures_total", reason="wrong") >= 1
    assert value(samples, "morpheo_db_pool_size") == 4


def test_the_option_reaches_the_config() -> None:
    options = Options()
    options.parseOptions(["--user", "a", "--password", "b", "--metrics-listen", "tcp:9100"])
    assert options.config().metricsListen == "tcp:9100"
    options = Options()
    options.parseOptions(["--user", "a", "--password", "b"])
    assert options.config().metricsListen is None
    with pytest.raises(usage.UsageError, match="--metrics-listen must be a Twisted endpoint"):
        Options().parseOptions(["--user", "a", "--password", "b", "--metrics-listen", "9100"])


def test_a_metrics_endpoint_that_cannot_listen_stops_the_start(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="cannot start: --metrics-listen 'nosuch:1': Unknown"):
        startServer(str(tmp_path / "data"), "--metrics-listen", "nosuch:1")


def test_several_workers_are_scraped_as_one(tmp_path: Path) -> None:
    """
    With C{--workers 2}, every worker counts into the run's directory and
    the first serves C{--metrics-listen} for all: each worker's requests
    show under its C{worker} label, exactly as many as its access lines,
    and a worker killed and replaced loses none of what it counted.
    """
    server = startServer(
        str(tmp_path / "data"), "--workers", "2", "--metrics-listen", "tcp:0:interface=127.0.0.1"
    )
    try:
        untilBothAnswer(server)

        def health(worker: str) -> float:
            return value(
                scrapeApart(server),
                "morpheo_http_requests_total",
                method="GET",
                route="/health",
                status="200",
                worker=worker,
            )

        def answered(worker: str) -> int:
            return sum(1 for w in ACCESS_WORKER.findall(server.log()) if w == worker)

        for worker in ("0", "1"):
            assert health(worker) == answered(worker) > 0
        # The worker that does not serve the metrics dies; its replacement
        # counts on from what it had counted.
        before = workers(server)
        counted = health("1")
        os.kill(before[1], signal.SIGKILL)
        waitUntil(lambda: workers(server).get(1, before[1]) != before[1], 30, "a replacement")
        seen = answered("1")
        waitUntil(
            lambda: curl("-sS", f"{server.url}/health").returncode == 0 and answered("1") > seen,
            60,
            "the replacement answering",
        )
        assert health("1") == answered("1") > counted
        assert len(SERVING.findall(server.log())) == 1
    finally:
        assert server.stop() == 0
