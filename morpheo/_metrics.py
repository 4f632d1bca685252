# -*- test-case-name: tests.unit.test_metrics,tests.integration.test_metrics -*-
"""
The service's Prometheus metrics, on prometheus_client: one L{Metrics} per
service, owning its metric families in a registry of its own (never the
library's global one), so that two services in one process, or two tests,
count apart.  The service wiring makes it and hands it to the parts that
count: the web layer (requests, bytes, transfers, pauses), the metadata
store's pool, the sweeper, the logins and their throttle.  Each part takes
L{None} for a fresh one of its own, so that a part used alone counts
somewhere harmless.

What is counted on every request goes through children bound once (a
label lookup built per request would cost more than the counting).

Several worker processes serving one port each count in a file of a
shared directory (prometheus_client's multiprocess mode), and a scrape
through any of them reads all the files: see L{Metrics}.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

#: The route label of a request no route took (an unknown path or method).
UNMATCHED = "unmatched"
#: The status label of a request whose client went away before an answer began.
ABORTED = "aborted"
#: The method label of a method no route knows.
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Seconds: from a cheap request (a millisecond) to a large transfer.
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
)  # fmt: skip
TRANSFER_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)

#: What a transfer is: an upload or a download of a blob.
DIRECTIONS = ("upload", "download")
#: What was slower when the streaming layer paused: the service (its blob
#: store, or its check of a form's fields: the socket stopped being read) or
#: the client (the answer stopped being made until it read).
SLOWER = ("service", "client")
#: Why a database call failed.
DB_ERRORS = ("timeout", "connection", "query")
#: What a node keeps in memory (L{morpheo.objects.RecordCache}, L{morpheo.objects.BlobCache}).
CACHES = ("records", "blobs")
#: Whether a read found what it asked for kept.
CACHE_OUTCOMES = ("hit", "miss")
#: Why a login failed.
LOGIN_FAILURES = ("wrong", "throttled", "busy", "error")

#: prometheus_client's environment variable for its multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MultiprocessError(ValueError):
    """The process already counts into another multiprocess directory."""


def _enterMultiprocess(directory: str) -> None:
    """
    Put this process in prometheus_client's multiprocess mode on
    C{directory}.  The mode is the process's, not a registry's: the library
    reads the directory from its environment variable and picks its kind of
    value once (a child process started with the variable set is in it from
    its first import).  Metrics made before this call stay in memory.
    """
    current = os.environ.get(MULTIPROC_ENV)
    if current is not None and os.path.realpath(current) != os.path.realpath(directory):
        raise MultiprocessError(
            f"this process already counts its metrics in {current};"
            f" prometheus_client takes one directory per process, not also {directory}"
        )
    if not os.path.isdir(directory):
        raise MultiprocessError(f"the metrics directory {directory} is not a directory")
    os.environ[MULTIPROC_ENV] = directory
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


def _child(family: Any, worker: str | None, *labels: str) -> Any:
    if worker is not None:
        return family.labels(*labels, worker)
    if labels:
        return family.labels(*labels)
    return family


@define
class Metrics:
    """
    The metric families of one service, and the children bound for what
    each part counts.

    @param registry: where the families are registered (a fresh
        L{CollectorRegistry} by default; never the library's global one).
    @param worker: the name of this worker when several processes serve
        one port: every series then carries a C{worker} label with it.
        Without it, no series says which process it comes from.
    @param multiprocessDir: a directory every worker writes its values to
        (prometheus_client's multiprocess mode); a scrape through any worker
        then reads every worker's values there.  The mode is the process's
        (see L{_enterMultiprocess}): one directory per process.  Gauges are
        summed over the live processes: when a worker exits, its parent
        calls C{prometheus_client.multiprocess.mark_process_dead(pid,
        directory)}, and empties the directory before the first worker
        starts.
    """

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    worker: str | None = field(default=None, kw_only=True)
    multiprocessDir: str | None = field(default=None, kw_only=True)
    #: What a scrape reads: C{registry}, or in multiprocess mode every
    #: worker's files.
    scrapeRegistry: CollectorRegistry = field(init=False)

    _requests: Counter = field(init=False)
    _durations: Histogram = field(init=False)
    _transferDurations: Histogram = field(init=False)
    _requestChildren: dict[tuple[str, str, str], Any] = field(init=False, factory=dict)
    _durationChildren: dict[tuple[str, str], Any] = field(init=False, factory=dict)
    #: Bound children, by what they count.
    bytesReceived: Any = field(init=False)
    bytesSent: Any = field(init=False)
    transfersInFlight: dict[str, Any] = field(init=False)
    transferDurations: dict[str, Any] = field(init=False)
    pauses: dict[str, Any] = field(init=False)
    dbPoolSize: Any = field(init=False)
    dbInUse: Any = field(init=False)
    dbBroken: Any = field(init=False)
    dbErrors: dict[str, Any] = field(init=False)
    sweepClaims: Any = field(init=False)
    sweepTemporary: Any = field(init=False)
    sweepOrphans: Any = field(init=False)
    sweepFailures: Any = field(init=False)
    loginFailures: dict[str, Any] = field(init=False)
    throttledAddresses: Any = field(init=False)
    cacheReads: dict[tuple[str, str], Any] = field(init=False)
    changesHeard: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.multiprocessDir is not None:
            _enterMultiprocess(self.multiprocessDir)
            self.scrapeRegistry = CollectorRegistry()
            MultiProcessCollector(self.scrapeRegistry, path=self.multiprocessDir)
        else:
            self.scrapeRegistry = self.registry
        worker = self.worker
        extra = ("worker",) if worker is not None else ()
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, (*labels, *extra), registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, (*labels, *extra), registry=r, multiprocess_mode="livesum")

        def bound(family: Any, *labels: str) -> Any:
            return _child(family, worker, *labels)

        self._requests = counter(
            "morpheo_http_requests",
            "HTTP requests answered (or aborted), by method, route template and status.",
            "method",
            "route",
            "status",
        )
        self._durations = Histogram(
            "morpheo_http_request_duration_seconds",
            "How long requests took, from their headers to their end, by method and route.",
            ("method", "route", *extra),
            registry=r,
            buckets=REQUEST_BUCKETS,
        )
        self._transferDurations = Histogram(
            "morpheo_transfer_duration_seconds",
            "How long the transfers of blobs took (uploads and downloads), to their end.",
            ("direction", *extra),
            registry=r,
            buckets=TRANSFER_BUCKETS,
        )
        self.transferDurations = {d: bound(self._transferDurations, d) for d in DIRECTIONS}
        inFlight = gauge(
            "morpheo_transfers_in_flight",
            "Uploads and downloads of blobs running now.",
            "direction",
        )
        self.transfersInFlight = {d: bound(inFlight, d) for d in DIRECTIONS}
        self.bytesReceived = bound(
            counter("morpheo_http_received_bytes", "Bytes of request bodies read from clients.")
        )
        self.bytesSent = bound(
            counter("morpheo_http_sent_bytes", "Bytes of response bodies written to clients.")
        )
        pauses = counter(
            "morpheo_backpressure_pauses",
            "Times a transfer was paused because one side was slower: the service (its blob"
            " store, or the check of a form's fields: the client's socket stopped being read)"
            " or the client (the answer stopped being made until it read).",
            "slower",
        )
        self.pauses = {s: bound(pauses, s) for s in SLOWER}
        self.dbPoolSize = bound(
            gauge("morpheo_db_pool_size", "Connections to the metadata database the pool keeps.")
        )
        self.dbInUse = bound(
            gauge("morpheo_db_pool_in_use", "Connections to the metadata database in use now.")
        )
        self.dbBroken = bound(
            gauge(
                "morpheo_db_pool_reconnecting",
                "Connections to the metadata database broken and being replaced now.",
            )
        )
        dbErrors = counter(
            "morpheo_db_errors",
            "Calls to the metadata database that failed, by kind: timeout (no answer in"
            " --db-timeout), connection (the connection was lost), query (refused by the"
            " database).",
            "kind",
        )
        self.dbErrors = {k: bound(dbErrors, k) for k in DB_ERRORS}
        self.sweepClaims = bound(
            counter("morpheo_sweep_claims_freed", "Claims of dead uploads freed by the sweeps.")
        )
        self.sweepTemporary = bound(
            counter(
                "morpheo_sweep_temporary_removed",
                "Temporary files of dead uploads removed by the sweeps (the local store).",
            )
        )
        self.sweepOrphans = bound(
            counter(
                "morpheo_sweep_orphans_removed", "Blobs no object points to removed by the sweeps."
            )
        )
        self.sweepFailures = bound(
            counter("morpheo_sweep_failures", "Sweeps that failed (to be tried again).")
        )
        logins = counter(
            "morpheo_login_failures",
            "Failed logins, by reason: wrong (user or password), throttled (429: too many"
            " failures from the address), busy (503: too many logins being checked), error"
            " (a checker failed).",
            "reason",
        )
        self.loginFailures = {reason: bound(logins, reason) for reason in LOGIN_FAILURES}
        self.throttledAddresses = bound(
            gauge(
                "morpheo_login_throttle_addresses",
                "Client addresses whose failed logins the throttle remembers now.",
            )
        )
        cacheReads = counter(
            "morpheo_cache_reads",
            "Reads of what the node keeps in memory (--cache), by cache (records, small blobs)"
            " and outcome: a hit needs neither the database nor the blob store.",
            "cache",
            "outcome",
        )
        self.cacheReads = {(c, o): bound(cacheReads, c, o) for c in CACHES for o in CACHE_OUTCOMES}
        self.changesHeard = bound(
            gauge(
                "morpheo_cache_changes_heard",
                "1 while the node hears the database's notifications of changed records (and"
                " so keeps records), else 0.",
            )
        )

    # The web layer's

    def requestEnded(self, method: str, route: str, status: str, seconds: float) -> None:
        """A request ended: answered with C{status}, or aborted."""
        key = (method, route, status)
        child = self._requestChildren.get(key)
        if child is None:
            child = self._requestChildren[key] = _child(
                self._requests, self.worker, method, route, status
            )
        child.inc()
        timing = self._durationChildren.get(key[:2])
        if timing is None:
            timing = self._durationChildren[key[:2]] = _child(
                self._durations, self.worker, method, route
            )
        timing.observe(seconds)

    # The sweeper's

    def swept(self, claims: int, temporary: int, orphans: int) -> None:
        if claims:
            self.sweepClaims.inc(claims)
        if temporary:
            self.sweepTemporary.inc(temporary)
        if orphans:
            self.sweepOrphans.inc(orphans)

    # Scraping

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """
        What a scrape reads, in the format C{accept} asks for (the
        Prometheus text format, or OpenMetrics), and its content type.
        """
        encode, contentType = choose_encoder(accept or "")
        return encode(self.scrapeRegistry), contentType


__all__ = ["ABORTED", "UNMATCHED", "Metrics", "MultiprocessError"]
