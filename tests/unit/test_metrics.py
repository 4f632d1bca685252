"""
The metrics: after requests, C{/metrics} (the Prometheus text format, parsed
with prometheus_client's own parser) has moved by exactly what was done:
requests by method, route template and status, their durations, the bytes
of the bodies both ways, transfers in flight, pauses for the slower side,
failed logins, what a sweep removed.  Each service counts apart; several
worker processes count into one directory and any of them serves the sum.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from morpheo._metrics import ABORTED, MULTIPROC_ENV, UNMATCHED, Metrics, MultiprocessError
from morpheo._types import Claim
from morpheo.blobstores import MemoryBudget
from morpheo.objects import LEFTOVER_AGE, Sweeper, blobKey, leftoverInterval
from morpheo.web._metered import MetricsPage
from morpheo.web._streaming import StreamingSite

from .harness import FORM_TYPE, Service, form, newUUID, request, status

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROOT = Path(__file__).resolve().parent.parent.parent


def parse(text: str) -> Samples:
    """Every sample of a scraped page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(service: Service) -> Samples:
    reply = service.request("GET", "/metrics")
    assert reply.code == 200, reply.body
    assert (reply.header("content-type") or "").startswith("text/plain; version=0.0.4")
    return parse(reply.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value, 0 if the page has none (a series not yet made)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, method: str, route: str, code: str) -> float:
    return value(samples, "morpheo_http_requests_total", method=method, route=route, status=code)


def counted(service: Service, name: str, **labels: str) -> float:
    """A sample's value as the service's registry holds it now."""
    found = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_requestsAreCountedByMethodRouteTemplateAndStatus(service: Service) -> None:
    before = scrape(service)
    stored = service.stored("problem")
    uuid = stored["uuid"]
    assert service.request("GET", f"/problem/{uuid}").code == 200
    assert service.request("GET", f"/problem/{uuid}").code == 200
    assert service.request("GET", f"/problem/{newUUID()}").code == 404
    assert service.request("GET", f"/problem/{uuid}/blob").code == 200
    assert service.request("GET", "/no/such/route/at/all").code == 404
    assert service.request("GET", "/problem", auth=None).code == 401
    after = scrape(service)
    expected = {
        ("POST", "/{kind}", "201"): 1,
        ("GET", "/{kind}/{uuid}", "200"): 2,
        ("GET", "/{kind}/{uuid}", "404"): 1,
        ("GET", "/{kind}/{uuid}/blob", "200"): 1,
        ("GET", UNMATCHED, "404"): 1,
        ("GET", "/{kind}", "401"): 1,
        # The first scrape, counted once it had ended.
        ("GET", "/metrics", "200"): 1,
    }
    for (method, route, code), n in expected.items():
        assert requests(after, method, route, code) - requests(before, method, route, code) == n
    # No series for a path: the labels are the templates only.
    routes = {dict(labels)["route"] for name, labels in after if name.endswith("requests_total")}
    assert routes == {"/{kind}", "/{kind}/{uuid}", "/{kind}/{uuid}/blob", "/metrics", UNMATCHED}


def test_durationsAreObservedOncePerRequest(service: Service) -> None:
    stored = service.stored("algo", b"x" * 10)
    for _ in range(3):
        assert service.request("GET", f"/algo/{stored['uuid']}").code == 200
    samples = scrape(service)
    name = "morpheo_http_request_duration_seconds"
    route = "/{kind}/{uuid}"
    assert value(samples, f"{name}_count", method="GET", route=route) == 3
    # The clock is the test's: no time passed, every request in the first bucket.
    assert value(samples, f"{name}_bucket", method="GET", route=route, le="0.001") == 3
    assert value(samples, f"{name}_count", method="POST", route="/{kind}") == 1
    transfers = "morpheo_transfer_duration_seconds_count"
    assert value(samples, transfers, direction="upload") == 1
    assert value(samples, transfers, direction="download") == 0


def test_aDurationIsTheClocksFromHeadersToTheEnd(service: Service) -> None:
    """A download held for 7 seconds of the service's clock takes 7 seconds."""
    stored = service.stored("algo", b"x" * 10)
    connection = service.connect()
    uuid = stored["uuid"]
    head = request("GET", f"/algo/{uuid}/blob")
    connection.send(head[:-2])
    service.advance(7)
    assert status(connection.send(head[-2:])) == 200
    name = "morpheo_http_request_duration_seconds"
    route = "/{kind}/{uuid}/blob"
    labels = {"method": "GET", "route": route}
    assert counted(service, f"{name}_sum", **labels) == 0.0
    # The headers' time before the request was routed is not its own; once
    # routed, the clock counts.
    held = service.connect()
    body = form({"name": "n", "size": "3"}, b"abc")
    held.send(request("POST", "/algo", {"Content-Type": FORM_TYPE}, body, length=len(body))[:-20])
    service.advance(7)
    assert status(held.send(body[-20:])) == 201
    durations = "morpheo_transfer_duration_seconds"
    assert counted(service, f"{durations}_sum", direction="upload") == 7.0
    # The algo stored first took no time.
    assert counted(service, f"{durations}_bucket", direction="upload", le="5.0") == 1
    assert counted(service, f"{durations}_bucket", direction="upload", le="10.0") == 2


def test_bytesInAndOutAreTheBodiesSizes(service: Service) -> None:
    blob = os.urandom(300_000)
    body = form({"name": "big", "size": str(len(blob))}, blob)
    reply = service.request("POST", "/algo", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 201
    assert counted(service, "morpheo_http_received_bytes_total") == len(body)
    assert counted(service, "morpheo_http_sent_bytes_total") == len(reply.body)
    download = service.request("GET", f"/algo/{reply.json()['uuid']}/blob")
    assert download.body == blob
    assert counted(service, "morpheo_http_sent_bytes_total") == len(reply.body) + len(blob)
    # A HEAD sends no body.
    assert service.request("HEAD", f"/algo/{reply.json()['uuid']}/blob").code == 200
    assert counted(service, "morpheo_http_sent_bytes_total") == len(reply.body) + len(blob)
    assert counted(service, "morpheo_http_received_bytes_total") == len(body)


def test_aTransferIsInFlightUntilItEndsAndAnAbortIsCountedSo(service: Service) -> None:
    inFlight = "morpheo_transfers_in_flight"
    connection = service.startUpload("data", newUUID())
    assert counted(service, inFlight, direction="upload") == 1
    assert counted(service, inFlight, direction="download") == 0
    connection.abort()
    assert counted(service, inFlight, direction="upload") == 0
    samples = scrape(service)
    assert requests(samples, "POST", "/{kind}", ABORTED) == 1
    assert value(samples, "morpheo_transfer_duration_seconds_count", direction="upload") == 1


def test_pausesForTheSlowerSideAreCounted() -> None:
    """
    A form's body is paused once while its fields are checked, and an
    upload larger than its share of memory more often while the store
    drains it; a download larger than the transport's buffer is paused
    while the client reads.  A small download is not paused.
    """
    service = Service(budget=MemoryBudget(total=128 * 1024, least=128 * 1024))
    pauses = "morpheo_backpressure_pauses_total"
    small = service.stored("algo", b"small")
    assert counted(service, pauses, slower="service") == 1
    assert service.request("GET", f"/algo/{small['uuid']}/blob").body == b"small"
    assert counted(service, pauses, slower="client") == 0
    blob = os.urandom(2 * 1024 * 1024)
    large = service.stored("algo", blob)
    assert counted(service, pauses, slower="service") > 2
    assert counted(service, pauses, slower="client") == 0
    assert service.request("GET", f"/algo/{large['uuid']}/blob").body == blob
    assert counted(service, pauses, slower="client") > 0


def test_failedLoginsAreCountedByReason() -> None:
    service = Service(loginThrottle=2)
    failures = "morpheo_login_failures_total"
    # Without credentials, no login was tried.
    assert service.request("GET", "/problem", auth=None).code == 401
    assert counted(service, failures, reason="wrong") == 0
    for _ in range(2):
        assert service.request("GET", "/problem", auth=("tester", "wrong")).code == 401
    assert counted(service, failures, reason="wrong") == 2
    assert service.request("GET", "/problem", auth=("tester", "wrong")).code == 429
    assert counted(service, failures, reason="throttled") == 1
    assert counted(service, failures, reason="wrong") == 2
    assert counted(service, "morpheo_login_throttle_addresses") == 1
    # Good credentials from another address are no failure.
    assert service.request("GET", "/problem", peer="198.51.100.7").code == 200
    assert counted(service, failures, reason="wrong") == 2


def deadUpload(service: Service) -> str:
    """What a node killed mid-upload left: its claim, and the blob it wrote."""
    uuid = newUUID()
    claim = Claim("data", uuid, blobKey("data", uuid), token=f"token-{uuid}")
    service.run(service.metadata.sibling("dead").claim(claim))
    assert claim.blobKey is not None
    writer = service.blobs.writer(claim.blobKey, 4)
    writer.write(b"left")
    service.run(writer.finish())
    return claim.blobKey


def orphan(service: Service) -> str:
    """A blob under the service's keys that nothing points to."""
    key = blobKey("data", newUUID())
    writer = service.blobs.writer(key, 6)
    writer.write(b"orphan")
    service.run(writer.finish())
    return key


def test_aSweepsResultIsCounted() -> None:
    service = Service(claimLease=9.0)
    dead = [deadUpload(service) for _ in range(2)]
    orphans = [orphan(service) for _ in range(3)]
    sweeper = Sweeper(service.objects, service.reactor, service.metrics)
    sweeper.startService()
    try:
        for _ in range(6):
            service.advance(3.0)
        assert not set(dead) & set(service.blobKeys())
        assert counted(service, "morpheo_sweep_claims_freed_total") == 2
        assert counted(service, "morpheo_sweep_orphans_removed_total") == 0
        # The leftovers' own timer, once they are older than the grace period.
        service.advance(LEFTOVER_AGE)
        service.advance(leftoverInterval(LEFTOVER_AGE))
    finally:
        sweeper.stopService()
    assert not set(orphans) & set(service.blobKeys())
    samples = scrape(service)
    assert value(samples, "morpheo_sweep_claims_freed_total") == 2
    assert value(samples, "morpheo_sweep_orphans_removed_total") == 3
    assert value(samples, "morpheo_sweep_temporary_removed_total") == 0
    assert value(samples, "morpheo_sweep_failures_total") == 0


def test_aFailedSweepIsCounted() -> None:
    service = Service(claimLease=9.0)
    sweeper = Sweeper(service.objects, service.reactor, service.metrics)
    sweeper.startService()
    service.metadata.goDown("the database is down")
    try:
        service.advance(3.0)
    finally:
        sweeper.stopService()
    assert counted(service, "morpheo_sweep_failures_total") == 1


def test_metricsNeedTheCredentials(service: Service) -> None:
    reply = service.request("GET", "/metrics", auth=None)
    assert reply.code == 401
    assert "credentials" in reply.error


def test_metricsServedApartAreNotServedBehindTheCredentials() -> None:
    service = Service(metricsHere=False)
    assert service.request("GET", "/metrics").code == 404
    assert "GET /metrics" not in service.request("GET", "/").json()
    assert "GET /metrics" in Service().request("GET", "/").json()
    site = StreamingSite(MetricsPage(service.metrics), reactor=service.reactor)
    answer = service.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", site)
    assert status(answer) == 200
    samples = parse(answer.partition(b"\r\n\r\n")[2].decode())
    assert requests(samples, "GET", "/metrics", "404") == 1
    assert status(service.raw(b"GET /problem HTTP/1.1\r\nHost: x\r\n\r\n", site)) == 404
    assert status(service.raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", site)) == 405


def test_openMetricsIsServedWhenAsked(service: Service) -> None:
    reply = service.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert reply.code == 200
    assert (reply.header("content-type") or "").startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")


def test_twoServicesCountApart() -> None:
    one, two = Service(), Service()
    one.stored("algo")
    assert (
        counted(one, "morpheo_http_requests_total", method="POST", route="/{kind}", status="201")
        == 1
    )
    assert (
        counted(two, "morpheo_http_requests_total", method="POST", route="/{kind}", status="201")
        == 0
    )


def test_aWorkersSeriesCarryItsName() -> None:
    service = Service(metrics=Metrics(worker="w3"))
    service.stored("algo")
    samples = scrape(service)
    assert requests(samples, "POST", "/{kind}", "201") == 0
    labels = {"method": "POST", "route": "/{kind}", "status": "201", "worker": "w3"}
    assert value(samples, "morpheo_http_requests_total", **labels) == 1
    assert all(dict(labels).get("worker") == "w3" for _, labels in samples)


def test_noSeriesSaysWhichProcessByDefault(service: Service) -> None:
    samples = scrape(service)
    assert not any("worker" in dict(labels) or "pid" in dict(labels) for _, labels in samples)


# Several workers: prometheus_client's multiprocess mode is the process's,
# so each worker is a process of its own here too.

#: A worker: the web layer in memory (the unit harness) on a L{Metrics} of
#: the workers' directory; it uploads, then answers a scrape.
WORKER = textwrap.dedent(
    """
    import sys
    from morpheo._metrics import Metrics
    from tests.unit.harness import Service

    directory, worker, uploads = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    service = Service(metrics=Metrics(worker=worker, multiprocessDir=directory))
    for _ in range(uploads):
        service.stored("algo", b"x" * 1000)
    service.metrics.dbPoolSize.set(4)
    held = service.startUpload("data", "0c5b3d5e-2b0e-4f57-9a3c-0d9f0e6f7a11")
    reply = service.request("GET", "/metrics")
    assert reply.code == 200, reply.body
    sys.stdout.buffer.write(reply.body)
    """
)


def worker(directory: Path, name: str, uploads: int, inherited: bool = False) -> Samples:
    """
    A worker process that uploads C{uploads} algos and answers a scrape;
    what it served.  With C{inherited}, it is started as a parent may start
    its workers: in prometheus_client's multiprocess mode from its first
    import (its environment names the directory).
    """
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    if inherited:
        env[MULTIPROC_ENV] = str(directory)
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(directory), name, str(uploads)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return parse(done.stdout)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "metrics"
    path.mkdir()
    yield path


@pytest.mark.parametrize("inherited", [False, True])
def test_workersScrapedThroughAnyOfThemShowEveryWorker(directory: Path, inherited: bool) -> None:
    first = worker(directory, "w1", 2, inherited)
    samples = worker(directory, "w2", 3, inherited)
    # Each process's file, by pid: two files of counters.
    assert len(list(directory.glob("counter_*.db"))) == 2
    total = "morpheo_http_requests_total"
    received = value(first, "morpheo_http_received_bytes_total", worker="w1")
    assert received > 2 * 1000
    for name, n in (("w1", 2), ("w2", 3)):
        labels = {"method": "POST", "route": "/{kind}", "status": "201", "worker": name}
        assert value(samples, total, **labels) == n
        assert value(samples, "morpheo_db_pool_size", worker=name) == 4
        upload = {"direction": "upload", "worker": name}
        assert value(samples, "morpheo_transfers_in_flight", **upload) == 1
        count = "morpheo_http_request_duration_seconds_count"
        assert value(samples, count, method="POST", route="/{kind}", worker=name) == n
    # The second worker's bytes are its own; the first's, as it served them.
    assert value(samples, "morpheo_http_received_bytes_total", worker="w1") == received
    assert value(samples, "morpheo_http_received_bytes_total", worker="w2") > received
    # Its scrape before this one ended before it: counted in its own file.
    scrapes = {"method": "GET", "route": "/metrics", "status": "200", "worker": "w1"}
    assert value(samples, total, **scrapes) == 1


def test_unnamedWorkersAreSummed(directory: Path) -> None:
    first = worker(directory, "", 2)
    second = worker(directory, "", 3)
    assert requests(first, "POST", "/{kind}", "201") == 2
    assert requests(second, "POST", "/{kind}", "201") == 5
    assert not any("worker" in dict(labels) for _, labels in second)
    # Gauges are summed over the workers (both files are there: the
    # parent has not marked the first one dead).
    assert value(second, "morpheo_transfers_in_flight", direction="upload") == 2
    assert value(second, "morpheo_db_pool_size") == 8


def test_aWorkerMarkedDeadLeavesTheGauges(directory: Path) -> None:
    """What the parent of the workers does when one exits: its gauges go, its counts stay."""
    worker(directory, "", 2)
    [pid] = [int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("counter_*.db")]
    mark_process_dead(pid, str(directory))
    samples = worker(directory, "", 3)
    assert requests(samples, "POST", "/{kind}", "201") == 5
    assert value(samples, "morpheo_transfers_in_flight", direction="upload") == 1
    assert value(samples, "morpheo_db_pool_size") == 4


def test_aProcessCountsInOneDirectoryOnly(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from morpheo._metrics import Metrics, MultiprocessError

        Metrics(multiprocessDir=sys.argv[1])
        try:
            Metrics(multiprocessDir=sys.argv[2])
        except MultiprocessError as e:
            print(e)
        """
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "one directory per process" in done.stdout


def test_aMissingDirectoryIsRefused(tmp_path: Path) -> None:
    with pytest.raises(MultiprocessError, match="not a directory"):
        Metrics(multiprocessDir=str(tmp_path / "missing"))
