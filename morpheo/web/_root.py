# -*- test-case-name: tests.unit.test_parser,tests.integration.test_embedding -*-
"""
The storage service's web resource as another application mounts it: a
stable resource, available before the service has started (it answers 503
until then), that can stand at the root of a site or under any path of a
twisted.web tree or a Klein branch route.

Uploads stream only if the host serves its tree with L{StreamingSite}.  A
stock L{twisted.web.server.Site} reads each request body whole (into memory,
or a temporary file above 100 KB) before any resource runs, so nothing here
can refuse it earlier: reads work, uploads are then refused with a 500 that
names L{StreamingSite}, and the first request through such a site logs a
warning.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from ._cors import CORSResource
from ._mount import noteMount
from ._streaming import IStreamingRequest, errorBody


def _error(request: IRequest, code: int, message: str) -> bytes:
    body = errorBody(message)
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _notUTF8(request: IRequest) -> str | None:
    """What of the URL is not UTF-8 (the routes read it as text), if anything."""
    try:
        b"/".join(request.prepath + request.postpath).decode("utf-8")
    except UnicodeDecodeError:
        return "the path"
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return "the Host header"
    return None


class _Unavailable(Resource):
    """The 503 of a storage service not (or no longer) running."""

    isLeaf = True

    def __init__(self, root: StorageRoot) -> None:
        super().__init__()
        self._root = root

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"Retry-After", b"5")
        return _error(request, 503, self._root._why)


class StorageRoot(Resource):
    """
    Delegates to the storage routes once they exist (L{setInner}).

    It is a leaf: the rest of the path (C{request.postpath}) is resolved by
    the storage routes as if they were mounted directly.  Its own 503 has
    the CORS headers of C{corsOrigins}, so that a browser can read it.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, corsOrigins: Iterable[str] = ("*",)) -> None:
        super().__init__()
        self._inner: IResource | None = None
        self._why = "the storage service is starting"
        self._warned = False
        self._unavailable = CORSResource(_Unavailable(self), corsOrigins)

    def setInner(
        self, inner: IResource | None, why: str = "the storage service is stopped"
    ) -> None:
        self._inner = inner
        self._why = why

    def render(self, request: IRequest) -> bytes | int:
        if not self._warned and not IStreamingRequest.providedBy(request):
            # Said once, at the first request, so that a host mounted on the
            # wrong site learns it before its first upload is refused.
            self._warned = True
            self._log.warn(
                "the storage resource is served by a site that reads whole request bodies"
                " before routing ({site}): uploads will be refused; serve it with"
                " morpheo.StreamingSite",
                site=type(getattr(request, "site", None)).__name__,
            )
        what = _notUTF8(request)
        if what is not None:
            return _error(
                request,
                400,
                f"{what} must be UTF-8 once percent-decoded: percent-encode the UTF-8 of"
                " each character",
            )
        noteMount(request)
        inner = self._unavailable if self._inner is None else self._inner
        return getChildForRequest(inner, request).render(request)  # type: ignore[no-any-return]


__all__ = ["StorageRoot"]
