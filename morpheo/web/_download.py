# -*- test-case-name: tests.integration.test_objects -*-
"""
Serving a stored blob: the headers an object store's clients expect,
conditional requests, byte ranges (one, or several as
C{multipart/byteranges}), HEAD; the bytes streamed from the blob store, or,
with redirects on, a GET sent to the store itself (307 to a presigned URL)
once the conditions are decided here.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from .._errors import APIError, BlobStoreError
from .._interfaces import IBlobFile
from .._types import StoredObject
from ..objects import Objects
from ._http import (
    ByteRange,
    Unsatisfiable,
    contentDisposition,
    etagOf,
    httpDate,
    ifRangeHolds,
    match,
    noneMatch,
    parseHTTPDate,
    parseRange,
    reprDigest,
)
from ._sendfile import SENDFILE_MIN, FileSender, sendfileTransport

_log = Logger()

DEFAULT_TYPE = "application/octet-stream"

#: A Range header the stores read exactly as this service does: one range.
_ONE_RANGE = re.compile(r"bytes=(?:[0-9]+-[0-9]*|-[0-9]+)")


def describe(request: IRequest, resource: StoredObject) -> None:
    """The validators and digest every response about C{resource} carries."""
    request.setHeader(b"ETag", etagOf(resource.sha256).encode())
    request.setHeader(b"Last-Modified", httpDate(resource.timestamp_upload).encode())
    request.setHeader(b"Repr-Digest", reprDigest(resource.sha256).encode())


def preconditions(request: IRequest, resource: StoredObject) -> int | None:
    """
    RFC 9110 section 13.2.2, in its order: the status that ends the request
    (412, or 304 for GET and HEAD), or L{None} to go on.
    """
    etag = etagOf(resource.sha256)
    ifMatch = _header(request, b"if-match")
    if ifMatch is not None:
        if not match(ifMatch, etag):
            return 412
    else:
        unmodified = _header(request, b"if-unmodified-since")
        date = parseHTTPDate(unmodified) if unmodified else None
        if date is not None and resource.timestamp_upload > date:
            return 412
    ifNoneMatch = _header(request, b"if-none-match")
    if ifNoneMatch is not None:
        if not noneMatch(ifNoneMatch, etag):
            return 304 if request.method in (b"GET", b"HEAD") else 412
    elif request.method in (b"GET", b"HEAD"):
        since = _header(request, b"if-modified-since")
        date = parseHTTPDate(since) if since else None
        if date is not None and resource.timestamp_upload <= date:
            return 304
    return None


def answerPreconditions(request: IRequest, resource: StoredObject) -> bool:
    """
    Whether L{preconditions} end a GET or HEAD of C{resource}: a 304 is
    set here (it has no body); a 412 is raised, for its JSON body to say
    which version the object is now (a HEAD gets the same headers).
    """
    status = preconditions(request, resource)
    if status == 412:
        raise APIError(
            412,
            f"{resource.kind} {resource.uuid} is not the version that If-Match or"
            f" If-Unmodified-Since asks for: it is now ETag {etagOf(resource.sha256)}",
        )
    if status is not None:
        request.setResponseCode(status)
        return True
    return False


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _redirectable(request: IRequest, ranges: list[ByteRange] | None) -> bool:
    """
    Whether the store, sent this GET again by the client (headers and all),
    answers as this service would; if not, the service serves it.

    The store judges ETags by its own, not by the blob's sha256: given
    C{If-Match} (other than C{*}) it would refuse, given C{If-Range} send
    the whole blob.  It judges dates by its copy's time, which is not the
    object's C{Last-Modified} (a PATCH that replaces the blob keeps the
    object's time).  An C{If-None-Match} that let the GET through here
    matches no ETag of the store's either, and the date conditions it
    overrides are ignored there too.  Of ranges, the store reads one, as
    written (S3 serves no more), and none that this service ignored.
    """
    if request.method != b"GET" or _header(request, b"if-range") is not None:
        return False
    ifMatch = _header(request, b"if-match")
    if ifMatch is None:
        if _header(request, b"if-unmodified-since") is not None:
            return False
    elif ifMatch.strip() != "*":
        return False
    if _header(request, b"if-none-match") is None:
        if _header(request, b"if-modified-since") is not None:
            return False
    header = _header(request, b"range")
    return header is None or (
        ranges is not None and len(ranges) == 1 and _ONE_RANGE.fullmatch(header.strip()) is not None
    )


async def serveBlob(
    request: IRequest,
    resource: StoredObject,
    objects: Objects,
    redirectLifetime: int | None = None,
) -> Any:
    """
    Answer a GET or HEAD of C{resource}'s blob; with C{redirectLifetime},
    a GET the store can answer is redirected to it, with a URL valid that
    many seconds.
    """
    describe(request, resource)
    request.setHeader(b"Accept-Ranges", b"bytes")
    disposition = contentDisposition(resource.filename or resource.uuid)
    request.setHeader(b"Content-Disposition", disposition.encode())
    if answerPreconditions(request, resource):
        return b""
    contentType = resource.content_type or DEFAULT_TYPE
    size = resource.size
    ranges = _ranges(request, resource)
    if redirectLifetime is not None and _redirectable(request, ranges):
        url = await objects.downloadURL(resource, redirectLifetime, contentType, disposition)
        # Temporary, and a credential for a while: never cached, never reused.
        request.setResponseCode(307)
        request.setHeader(b"Location", url.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"0")
        return b""
    parts: list[tuple[bytes, ByteRange]]
    closing = b""
    if ranges is not None and len(ranges) > 1:
        boundary = secrets.token_hex(16)
        parts = [
            (
                (
                    f"\r\n--{boundary}\r\nContent-Type: {contentType}\r\n"
                    f"Content-Range: {r.contentRange(size)}\r\n\r\n"
                ).encode(),
                r,
            )
            for r in ranges
        ]
        closing = f"\r\n--{boundary}--\r\n".encode()
        total = sum(len(head) + r.length for head, r in parts) + len(closing)
        if total > size:
            # Many small ranges, whose parts' headers would outweigh the
            # blob: RFC 9110 lets a server ignore Range, and the whole blob
            # is the smaller answer.
            ranges = None
        else:
            request.setResponseCode(206)
            request.setHeader(
                b"Content-Type", f"multipart/byteranges; boundary={boundary}".encode()
            )
            request.setHeader(b"Content-Length", b"%d" % total)
    if ranges is None:
        request.setHeader(b"Content-Type", contentType.encode())
        request.setHeader(b"Content-Length", b"%d" % size)
        parts = [(b"", ByteRange(0, size))]
        closing = b""
    elif len(ranges) == 1:
        [only] = ranges
        request.setResponseCode(206)
        request.setHeader(b"Content-Type", contentType.encode())
        request.setHeader(b"Content-Range", only.contentRange(size).encode())
        request.setHeader(b"Content-Length", b"%d" % only.length)
        parts = [(b"", only)]
    try:
        transport = sendfileTransport(request)
        if (
            transport is not None
            and request.method == b"GET"
            and sum(r.length for _, r in parts) >= SENDFILE_MIN
        ):
            blob = await objects.openFile(resource)
            if blob is not None:
                await _sendFile(request, transport, blob, parts, closing)
                return b""
        if request.method == b"HEAD" or closing:
            # The headers promise a blob: a HEAD finds out it is there, or
            # answers as the GET would; so does a GET of several ranges,
            # which writes a part's head before the store has said a word.
            await objects.readable(resource)
            if request.method == b"HEAD":
                return b""
        for head, r in parts:
            if head:
                request.write(head)
            if r.length:
                await objects.produce(resource, IConsumer(request), r.start, r.length)
        if closing:
            request.write(closing)
    except BlobStoreError:
        if request.startedWriting:  # type: ignore[attr-defined]
            # A finished response would look complete: cut it instead.
            _log.failure("download of {key} failed", key=resource.blob_key)
            request.channel.transport.abortConnection()  # type: ignore[attr-defined]
            return NOT_DONE_YET
        # The error is not this representation: none of its headers stay.
        for name in _REPRESENTATION:
            request.responseHeaders.removeHeader(name)
        raise
    return b""


async def _sendFile(
    request: IRequest,
    transport: Any,
    blob: IBlobFile,
    parts: list[tuple[bytes, ByteRange]],
    closing: bytes,
) -> None:
    """Send C{parts} of the open C{blob} with C{sendfile}, each after its
    head (the first write sends the response's head too)."""
    channel: Any = request.channel  # type: ignore[attr-defined]
    try:
        sender = FileSender(
            request,
            transport,
            blob,
            getattr(channel, "_idleTimeout", None),
            getattr(channel, "_clientStalled", transport.abortConnection),
        )
    except BaseException:
        await blob.close()
        raise
    try:
        for head, r in parts:
            request.write(head)
            if r.length:
                await sender.send(r.start, r.length)
        if closing:
            request.write(closing)
    finally:
        await sender.close()


#: What L{serveBlob} says of the blob before sending it.
_REPRESENTATION = (
    b"ETag",
    b"Last-Modified",
    b"Repr-Digest",
    b"Accept-Ranges",
    b"Content-Disposition",
    b"Content-Range",
    b"Content-Type",
    b"Content-Length",
)


def _ranges(request: IRequest, resource: StoredObject) -> list[ByteRange] | None:
    """The ranges to serve, L{None} for the whole blob; 416 raised as is."""
    header = _header(request, b"range")
    if header is None or request.method not in (b"GET", b"HEAD"):
        return None
    ifRange = _header(request, b"if-range")
    if ifRange is not None and not ifRangeHolds(
        ifRange, etagOf(resource.sha256), resource.timestamp_upload
    ):
        return None
    try:
        return parseRange(header, resource.size)
    except Unsatisfiable:
        raise RangeNotSatisfiable(resource.size) from None


class RangeNotSatisfiable(Exception):
    """416: rendered by the routes with C{Content-Range: bytes */size}."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size
