# -*- test-case-name: tests.unit.test_bench -*-
"""
Small requests, many at once (wrk, C{--connections} of them for
C{--duration} seconds): 4 KB blob GETs and uploads through the service on
the local store and on S3, beside SeaweedFS's own S3 GET and PUT of a 4 KB
object (presigned URLs, so that wrk signs nothing); metadata GETs; the bare
C{/health} beside nginx's GET of the same 4 KB.  With the CPU time each
server spent a request, and the service's peak memory.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

from attrs import define, field, frozen

from bench._common import Figure, cpuSeconds, credentials, median, peakRSS, postmaster, upload
from bench._context import Bench
from bench._refs import Nginx, presigned
from bench._wrk import wrk
from tests.integration.helpers import BOUNDARY, form
from tests.integration.servers import Server

SMALL = 4096


@frozen
class Target:
    """One kind of request, and whose processes answer it."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = field(factory=dict)
    body: str | None = None
    #: The processes whose CPU time is counted, and those of the database.
    pids: Callable[[], list[int]] = list
    dbPids: Callable[[], list[int]] = list


@define
class Measured:
    """A kind of request's samples over the runs."""

    rates: list[float] = field(factory=list)
    cpu: list[float] = field(factory=list)
    db: list[float] = field(factory=list)
    errors: int = 0


def measure(bench: Bench, target: Target, into: Measured) -> None:
    """One wrk run of C{target}: its rate, and milliseconds of CPU a request."""
    pids, dbPids = target.pids(), target.dbPids()
    cpu, db = cpuSeconds(pids), cpuSeconds(dbPids)
    counted = wrk(
        target.url,
        bench.settings.duration,
        bench.settings.connections,
        target.method,
        target.headers,
        target.body,
    )
    requests = max(counted.requests, 1)
    into.rates.append(counted.rate)
    into.cpu.append((cpuSeconds(pids) - cpu) * 1000 / requests)
    into.db.append((cpuSeconds(dbPids) - db) * 1000 / requests)
    into.errors += counted.errors


def _serviceTargets(server: Server, blob: str, formPath: str) -> dict[str, Target]:
    """A server's kinds of request, with the 4 KB blob uploaded to it for its GETs."""
    blobUUID = upload(server, blob, SMALL)[0]
    token = base64.b64encode(credentials(server).encode()).decode()
    auth = {"Authorization": f"Basic {token}"}

    def pids() -> list[int]:
        return [server.process.pid]

    def db() -> list[int]:
        return postmaster(server.dataDir)

    uploads = {**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return {
        "get": Target(f"{server.url}/data/{blobUUID}/blob", headers=auth, pids=pids, dbPids=db),
        "meta": Target(f"{server.url}/data/{blobUUID}", headers=auth, pids=pids, dbPids=db),
        "health": Target(f"{server.url}/health", pids=pids, dbPids=db),
        "up": Target(f"{server.url}/data", "POST", uploads, formPath, pids, db),
    }


def requests(bench: Bench, workers: int) -> list[Figure]:
    """The small requests' section, for C{workers} workers."""
    store = bench.seaweedfs()
    work = bench.directory("small")
    blob = os.path.join(work, "small.bin")
    data = os.urandom(SMALL)
    with open(blob, "wb") as f:
        f.write(data)
    formPath = os.path.join(work, "form.bin")
    with open(formPath, "wb") as f:
        f.write(form(("size", str(SMALL)), ("blob", data)))
    store.putObject("bench/small", data)
    get = presigned(store, "bench/small")[1]
    put = presigned(store, "bench/small-put")[0]

    def weed() -> list[int]:
        assert store.process is not None
        return [store.process.pid]

    with (
        bench.server(workers) as local,
        bench.server(workers, store) as remote,
        Nginx(bench.directory("nginx"), workers) as nginx,
    ):
        with open(os.path.join(nginx.www, "small.bin"), "wb") as f:
            f.write(data)
        targets = {
            **{f"local {k}": t for k, t in _serviceTargets(local, blob, formPath).items()},
            **{f"S3 {k}": t for k, t in _serviceTargets(remote, blob, formPath).items()},
            "weed get": Target(get, pids=weed),
            "weed put": Target(put, "PUT", body=blob, pids=weed),
            "nginx get": Target(f"{nginx.url}/small.bin", pids=nginx.pids),
        }  # fmt: skip
        measured = {name: Measured() for name in ORDER}
        for run in range(bench.settings.runs):
            bench.say(f"small requests, workers {workers}, run {run + 1}")
            for name in ORDER:
                measure(bench, targets[name], measured[name])
        rss = {"local": peakRSS(local.process.pid), "S3": peakRSS(remote.process.pid)}
    return _figures(measured, rss, workers)


#: The order of the measures in a run: each reference beside those measured against it.
ORDER = (
    "local get", "weed get", "S3 get", "local meta", "local up", "weed put", "S3 up",
    "local health", "nginx get",
)  # fmt: skip
#: The service's lines: its measure, what it is, the reference, the goal.
LINES = (
    ("local get", "4 KB GET, local store", "weed get", 0.5),
    ("local get", "4 KB GET, local store", "nginx get", None),
    ("S3 get", "4 KB GET, S3 store", "weed get", 0.5),
    ("local up", "4 KB upload, local store", "weed put", 0.5),
    ("S3 up", "4 KB upload, S3 store", "weed put", 0.5),
    ("local meta", "metadata GET", "weed get", None),
    ("local health", "GET /health", "nginx get", None),
)
REFERENCES = {
    "weed get": "SeaweedFS S3 GET",
    "weed put": "SeaweedFS S3 PUT",
    "nginx get": "nginx 4 KB GET",
}


def _figures(measured: dict[str, Measured], rss: dict[str, int], workers: int) -> list[Figure]:
    figures = []
    for name, title, reference, goal in LINES:
        m, ref = measured[name], measured[reference]
        errors = m.errors + ref.errors
        note = f"{errors} errors" if errors else ""
        figures.append(
            Figure(title, "req/s", workers, m.rates, REFERENCES[reference], ref.rates, goal, note)
        )
    seen = set()
    for name, title, reference, _ in LINES:
        if name in seen:
            continue
        seen.add(name)
        m, ref = measured[name], measured[reference]
        db = median(m.db)
        figures.append(
            Figure(
                f"CPU/request: {title}", "ms", workers, m.cpu, REFERENCES[reference], ref.cpu,
                note=f"+{db:.2f} ms PostgreSQL" if db > 0 else "",
            )
        )  # fmt: skip
    for store, value in rss.items():
        figures.append(
            Figure(f"small requests: service peak RSS, {store}", "MB", workers, [value / 1e6])
        )
    return figures
