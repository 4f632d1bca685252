# -*- test-case-name: tests.unit.test_metrics,tests.integration.test_metrics -*-
"""
The web layer's metrics: every request counted once when it ends (by
method, route template and status, with its duration), the transfers of
blobs in flight and their durations, and the page a scrape reads.

The route is the template of the Klein rule that took the request
(C{/{kind}/{uuid}/blob}), never its path: paths are unbounded, and so would
the series be.  A request no route took is counted under L{UNMATCHED}.
The bytes of bodies and the pauses are counted by the streaming layer as
they happen (see L{morpheo.web._streaming}), on the L{Metrics} the request
carries from here.
"""

from __future__ import annotations

import re
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from .._metrics import ABORTED, METHODS, OTHER_METHOD, UNMATCHED, Metrics
from ._streaming import errorBody

#: The endpoints whose requests are transfers of blobs, and which way.
_UPLOADS = ("upload", "patch_")
_DOWNLOAD = "blob"


def routeTemplates(app: Klein) -> dict[str, str]:
    """The route template of each endpoint of C{app}: C{/{kind}/{uuid}/blob}."""
    return {
        str(rule.endpoint): re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
    }


def _direction(endpoint: str, method: bytes) -> str | None:
    if endpoint.startswith(_UPLOADS):
        return "upload"
    if endpoint == _DOWNLOAD and method == b"GET":
        return "download"
    return None


class RequestMeter:
    """
    Counts the requests of one Klein app: L{begin} as a request reaches
    the storage resource, L{routed} once a route has taken it; the rest
    when it ends (answered or aborted).
    """

    def __init__(self, metrics: Metrics, clock: IReactorTime, app: Klein) -> None:
        self.metrics = metrics
        self._clock = clock
        self._templates = routeTemplates(app)

    def begin(self, request: Any) -> None:
        request.metrics = self.metrics
        request.meteredSince = self._clock.seconds()
        request.notifyFinish().addBoth(self._ended, request)

    def routed(self, request: Any, endpoint: str) -> None:
        request.meteredRoute = self._templates.get(endpoint, UNMATCHED)
        direction = _direction(endpoint, request.method)
        if direction is not None:
            request.meteredTransfer = direction
            self.metrics.transfersInFlight[direction].inc()

    def _ended(self, result: object, request: Any) -> None:
        metrics = self.metrics
        if isinstance(result, Failure) and not request.startedWriting:
            status = ABORTED
        else:
            status = str(request.code)
        method = request.method.decode("latin-1")
        if method not in METHODS:
            method = OTHER_METHOD
        seconds = self._clock.seconds() - request.meteredSince
        route = getattr(request, "meteredRoute", UNMATCHED)
        metrics.requestEnded(method, route, status, seconds)
        direction = getattr(request, "meteredTransfer", None)
        if direction is not None:
            metrics.transfersInFlight[direction].dec()
            metrics.transferDurations[direction].observe(seconds)

    def resource(self, wrapped: IResource) -> IResource:
        """C{wrapped}, its requests counted."""
        return _Metered(wrapped, self)

    def app(self, app: Any) -> Any:
        """Klein C{app} as L{klein.resource.KleinResource} sees it, its routes noted."""
        return _RoutedApp(app, self)


class _Metered(Resource):
    """A leaf in front of C{wrapped} that starts counting each request."""

    isLeaf = True

    def __init__(self, wrapped: IResource, meter: RequestMeter) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._meter = meter

    def render(self, request: IRequest) -> bytes | int:
        self._meter.begin(request)
        return getChildForRequest(self._wrapped, request).render(request)  # type: ignore[no-any-return]


class _RoutedApp:
    """A Klein app whose endpoints note their route on the request."""

    def __init__(self, app: Any, meter: RequestMeter) -> None:
        self._app = app
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def execute_endpoint(self, endpoint: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        self._meter.routed(request, endpoint)
        return self._app.execute_endpoint(endpoint, request, *args, **kwargs)


def scrape(
    metrics: Metrics, request: IRequest, clock: Any = None, pool: ThreadPool | None = None
) -> Deferred[bytes]:
    """
    The page of C{metrics} for C{request}, in the format its C{Accept}
    asks for; made in C{pool} if given (a multiprocess scrape reads every
    worker's file), with C{clock} the reactor.
    """
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")

    def made(page: tuple[bytes, str]) -> bytes:
        body, contentType = page
        request.setHeader(b"Content-Type", contentType.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    if pool is None or clock is None:
        d: Deferred[tuple[bytes, str]] = maybeDeferred(metrics.exposition, accept)
    else:
        d = deferToThreadPool(clock, pool, metrics.exposition, accept)
    return d.addCallback(made)


class MetricsPage(Resource):
    """
    C{/metrics} alone, without credentials, for a listener of its own
    (C{--metrics-listen}); every other path is a JSON 404.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, clock: Any = None, pool: ThreadPool | None = None) -> None:
        super().__init__()
        self._metrics = metrics
        self._clock = clock
        self._pool = pool

    def render(self, request: IRequest) -> bytes | int:
        if request.path != b"/metrics" or request.method not in (b"GET", b"HEAD"):
            code, message = (404, "only GET /metrics is served here")
            if request.path == b"/metrics":
                code, message = (405, "only GET /metrics is served here")
                request.setHeader(b"Allow", b"GET, HEAD")
            body = errorBody(message)
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body

        def write(body: bytes) -> None:
            if request.method != b"HEAD":
                request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            request.processingFailed(failure)  # type: ignore[attr-defined]

        scrape(self._metrics, request, self._clock, self._pool).addCallbacks(write, failed)
        return NOT_DONE_YET


__all__ = ["MetricsPage", "RequestMeter", "routeTemplates", "scrape"]
