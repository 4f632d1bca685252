# -*- test-case-name: tests.integration.test_accesslog -*-
"""
The access log, through twisted.logger: one event per request, with
structured fields (method, path, status, bytes in and out, duration, client
address, user), in place of twisted.web's combined log line (which knows
neither the user nor the bytes received, and goes through the legacy log).

The events are ordinary twisted.logger events in the C{morpheo.access}
namespace: they are written wherever the rest of the log goes, as text, or
as JSON with C{--log-format json} (see L{morpheo.service._jsonlog}).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from ._streaming import StreamingSite

ACCESS_NAMESPACE = "morpheo.access"

#: Module-level: a Logger class attribute would take the class's namespace.
_accessLog = Logger(namespace=ACCESS_NAMESPACE)

ACCESS_FORMAT = (
    '{client} {user} "{method} {path}" {status} in={bytesIn} out={bytesOut} {duration:.3f}s'
)


def _client(request: http.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if host is not None:
        return str(host)
    name = getattr(address, "name", None)
    return f"unix:{name.decode() if isinstance(name, bytes) else name or ''}"


def _bytesIn(request: http.Request) -> int:
    body = getattr(request, "body", None)
    received = getattr(body, "received", None)
    if isinstance(received, int):
        return received
    content = getattr(request, "content", None)
    try:
        return int(content.tell())  # type: ignore[union-attr]
    except Exception:
        return 0


class AccessLogSite(StreamingSite):
    """
    A L{StreamingSite} that logs each request once, when it ends: when its
    response is complete, or when its connection is lost before that, with
    C{aborted} true (and status C{"-"} if no response had started, else the
    status its head carried: a download cut mid-body was a 200).  The
    streaming layer makes a request whose client went away end this way,
    never as the 500 of a handler that the loss made fail.

    In a worker of C{--workers}, C{worker} is its index, said in each line.
    """

    worker: int | None = None

    def getResourceFor(self, request: IRequest) -> IResource:
        # Called when the request is dispatched (at its headers, for a
        # streaming request): the start of its duration.
        request.morpheoStarted = self.reactor.seconds()  # type: ignore[attr-defined]
        request.notifyFinish().addErrback(self._lost, request)  # type: ignore[attr-defined]
        return super().getResourceFor(request)  # type: ignore[no-any-return]

    def _lost(self, failure: Failure, request: http.Request) -> None:
        self.logRequest(request, aborted=True)

    def log(self, request: http.Request) -> None:
        """Replaces the combined log: called by twisted.web as a response ends."""
        self.logRequest(request, aborted=False)

    def logRequest(self, request: http.Request, aborted: bool) -> None:
        if getattr(request, "morpheoLogged", False):
            return
        request.morpheoLogged = True  # type: ignore[attr-defined]
        started = getattr(request, "morpheoStarted", None)
        now = self.reactor.seconds()
        fields: dict[str, Any] = {
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1")[:2048],
            "status": request.code if request.startedWriting or not aborted else "-",
            "bytesIn": _bytesIn(request),
            "bytesOut": getattr(request, "sentLength", 0),
            "duration": round(now - started, 6) if started is not None else 0.0,
            "client": _client(request),
            "user": getattr(request, "morpheoUser", None) or "-",
            "aborted": aborted,
        }
        # The text line says it too: its status alone ("-") could be a
        # response without one.  Formatted here, by str.format: the
        # logger's own formatting costs three times as much, per request.
        line = ACCESS_FORMAT.format(**fields) + (" (aborted)" if aborted else "")
        if self.worker is not None:
            fields["worker"] = self.worker
            line += f" worker={self.worker}"
        _accessLog.info("{accessLine}", accessLine=line, access=True, **fields)


__all__ = ["ACCESS_FORMAT", "ACCESS_NAMESPACE", "AccessLogSite"]
