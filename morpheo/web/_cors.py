# -*- test-case-name: tests.integration.test_cors -*-
"""
CORS, as the original service did with rs/cors (allowed origins C{*} by
default): a resource wrapper, so that every route, its errors and its 401s
included, carries the headers a browser needs, and preflight C{OPTIONS}
requests are answered here, without credentials (browsers never send them
on a preflight).
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

#: Every method of the routes.
ALLOWED_METHODS = (b"GET", b"HEAD", b"POST", b"PATCH", b"DELETE")
#: rs/cors's defaults, plus what the routes read: credentials, conditions,
#: ranges and stated digests.
ALLOWED_HEADERS = (
    b"Authorization", b"Content-Type", b"Accept", b"Origin", b"X-Requested-With",
    b"Range", b"If-Match", b"If-None-Match", b"If-Range", b"If-Modified-Since",
    b"Repr-Digest", b"Content-MD5",
    # Resumable uploads (tus, the IETF draft).
    b"Tus-Resumable", b"Upload-Length", b"Upload-Defer-Length", b"Upload-Metadata",
    b"Upload-Offset", b"Upload-Checksum", b"Upload-Concat", b"Upload-Complete",
    b"Upload-Draft-Interop-Version",
)  # fmt: skip
#: The response headers a script may read besides the safelisted ones.
EXPOSED_HEADERS = (
    b"ETag", b"Content-Length", b"Content-Range", b"Accept-Ranges", b"Content-Disposition",
    b"Repr-Digest", b"WWW-Authenticate", b"Allow", b"Retry-After",
    # Resumable uploads (tus, the IETF draft).
    b"Location", b"Tus-Resumable", b"Tus-Version", b"Tus-Extension", b"Tus-Max-Size",
    b"Tus-Checksum-Algorithm", b"Upload-Offset", b"Upload-Length", b"Upload-Defer-Length",
    b"Upload-Metadata", b"Upload-Expires", b"Upload-Concat", b"Upload-Complete", b"Upload-Limit",
    b"Morpheo-Resource",
)  # fmt: skip
MAX_AGE = 600


class CORSResource(Resource):
    """
    Wraps C{wrapped} (any resource: a Klein app, a tree) with CORS.

    It is a leaf: the rest of the path is resolved under C{wrapped} as if
    the wrapper were not there, so it can stand at the root or be mounted
    at any path.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource, origins: Iterable[str] = ("*",)) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.origins = frozenset(o.rstrip("/").encode("utf-8") for o in origins)
        self.anyOrigin = b"*" in self.origins

    def _allowedOrigin(self, origin: bytes | None) -> bytes | None:
        """The Access-Control-Allow-Origin value for C{origin}, or None if not allowed."""
        if origin is None:
            return None
        if self.anyOrigin:
            return b"*"
        return origin if origin.rstrip(b"/") in self.origins else None

    def render(self, request: IRequest) -> bytes | int:
        origin = request.getHeader(b"origin")
        allowed = self._allowedOrigin(origin)
        if not self.anyOrigin:
            request.setHeader(b"Vary", b"Origin")
        preflight = request.method == b"OPTIONS" and request.getHeader(
            b"access-control-request-method"
        )
        if preflight:
            return self._preflight(request, allowed)
        if allowed is not None:
            request.setHeader(b"Access-Control-Allow-Origin", allowed)
            request.setHeader(b"Access-Control-Expose-Headers", b", ".join(EXPOSED_HEADERS))
        return getChildForRequest(self.wrapped, request).render(request)  # type: ignore[no-any-return]

    def _preflight(self, request: IRequest, allowed: bytes | None) -> bytes:
        """
        Answer a preflight: 204, with the allowed methods and headers when
        the origin is allowed, and without them otherwise (the browser then
        refuses the real request).
        """
        request.setResponseCode(204)
        if allowed is not None:
            request.setHeader(b"Access-Control-Allow-Origin", allowed)
            request.setHeader(b"Access-Control-Allow-Methods", b", ".join(ALLOWED_METHODS))
            request.setHeader(b"Access-Control-Allow-Headers", b", ".join(ALLOWED_HEADERS))
            request.setHeader(b"Access-Control-Max-Age", b"%d" % MAX_AGE)
        request.setHeader(b"Content-Length", b"0")
        return b""


__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "EXPOSED_HEADERS", "CORSResource"]
