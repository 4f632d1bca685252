# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
What the blob stores behind HTTP (S3, Google Cloud Storage) do the same way
around each request: authorize it, send it, turn a status they did not
expect into the store's own error, read what is left of a small answer so
that its connection is reused, download a blob or a range of it, and read
the times their listings give.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from .._errors import BlobStoreError
from ._bodies import BytesBody
from ._download import Dropped, produceNothing, streamResponse
from ._flow import MemoryBudget
from ._http import SMALL_BODY, asStoreError, makeAgent, readSmall

V = TypeVar("V")

_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def parseTime(text: str | None) -> float | None:
    """
    An RFC 3339 time (S3's C{LastModified}, GCS's C{updated}) as seconds
    since the epoch; L{None} for anything else, which the sweep then
    takes for too recent to touch.  Any number of fractional digits: some
    stores give nanoseconds, more than L{datetime} reads.
    """
    m = _TIME.fullmatch(text.strip()) if text else None
    if m is None:
        return None
    year, month, day, hour, minute, second = map(int, m.group(1, 2, 3, 4, 5, 6))
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds + float(m.group(7) or 0)


class HTTPBlobStore:
    """
    The part of a remote store that is only HTTP.  Subclasses say how a
    request is authorized (C{_authorize}) and what an error answer means
    (C{_explain}).  Its uploads share C{budget} for what they hold in
    memory (downloads hold nothing: the store's socket is paused instead).
    """

    #: Its failures are a backend's (502, bad gateway), not this service's.
    remote = True
    #: Other processes may write to the bucket too.
    shared = True

    def __init__(
        self,
        reactor: Any,
        pool: ThreadPool,
        agent: IAgent | None,
        highWater: int | None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.highWater = highWater
        self.budget = MemoryBudget() if budget is None else budget
        self._reactor: IReactorFromThreads = reactor
        self._clock: IReactorTime = reactor
        self._pool = pool
        self._agent = agent or makeAgent(reactor)

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: IBodyProducer | None = None,
        data: bytes | None = None,
        ok: tuple[int, ...] = (200, 204, 206),
        key: str | None = None,
    ) -> Deferred[IResponse]:
        """
        Authorize and send one request, whose body is C{body} (streamed) or
        C{data}; fires with the response if its status is in C{ok}, else
        fails with a L{BlobStoreError} saying C{what} failed and why (or
        L{BlobNotFound} when the store says C{key} is not there).
        """
        authorized = self._authorize(
            method, url, dict(headers or {}), None if body is not None else data
        )

        def send(signedHeaders: dict[str, str]) -> Deferred[IResponse]:
            producer = body
            if producer is None and data is not None:
                producer = BytesBody(data)
            elif producer is None and method in ("PUT", "POST"):
                producer = BytesBody(b"")
            raw = Headers({k.encode(): [v.encode()] for k, v in signedHeaders.items()})
            return self._agent.request(method.encode(), url.encode(), raw, producer)

        def check(response: IResponse) -> IResponse | Deferred[IResponse]:
            if response.code in ok:
                return response
            return self._read(response).addCallback(self._refuse, response.code, what, key)

        def failed(reason: Failure) -> Failure:
            return asStoreError(what, reason)

        d: Deferred[IResponse] = authorized.addCallback(send).addCallback(check)
        return d.addErrback(failed)

    def _refuse(self, body: bytes, code: int, what: str, key: str | None) -> NoReturn:
        detail = self._explain(body, code, key)
        raise BlobStoreError(f"{what} failed: HTTP {code} {detail}".rstrip())

    def _read(self, response: IResponse, limit: int = SMALL_BODY) -> Deferred[bytes]:
        """A small response body (XML, JSON, an error)."""
        return readSmall(response, self._clock, limit)

    def _drained(self, response: IResponse, value: V = None) -> Deferred[V]:  # type: ignore[assignment]
        """Read the (small) rest of a response so its connection is reused;
        fires with C{value}."""
        return self._read(response).addCallback(lambda _: value)

    def _download(
        self,
        key: str,
        consumer: IConsumer,
        offset: int,
        length: int | None,
        url: str,
        what: str,
        probe: Callable[[], Deferred[IResponse]],
    ) -> Deferred[None]:
        """
        Stream C{length} bytes (all, if None) of the blob at C{url} from
        C{offset} into C{consumer}; a read of no bytes only checks with
        C{probe} that the blob is there.
        """
        if length == 0:
            probed: Deferred[None] = probe().addCallback(self._drained)
            return probed.addCallback(lambda _: produceNothing(consumer))
        if offset == 0:
            # A whole blob (the usual download) is a plain GET, which the
            # stores serve for less than a range; only when the blob turns
            # out longer than wanted is the range asked for.
            d = self._call("GET", url, what, key=key)
            return d.addCallback(self._whole, key, consumer, length, url, what)
        return self._range(key, consumer, offset, length, url, what)

    def _whole(
        self,
        response: IResponse,
        key: str,
        consumer: IConsumer,
        length: int | None,
        url: str,
        what: str,
    ) -> Deferred[None]:
        if length is None or response.length == length:
            return streamResponse(response, consumer, what, length)
        response.deliverBody(Dropped())
        return self._range(key, consumer, 0, length, url, what)

    def _range(
        self,
        key: str,
        consumer: IConsumer,
        offset: int,
        length: int | None,
        url: str,
        what: str,
    ) -> Deferred[None]:
        end = "" if length is None else str(offset + length - 1)
        headers = {"Range": f"bytes={offset}-{end}"}
        d = self._call("GET", url, what, headers=headers, key=key)
        return d.addCallback(streamResponse, consumer, what, length)

    # For subclasses

    def _authorize(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> Deferred[dict[str, str]]:
        """C{headers} with what authorizes the request; C{data} is its body,
        None when it is streamed."""
        raise NotImplementedError(f"{type(self).__name__} must say how to authorize")

    def _explain(self, body: bytes, code: int, key: str | None) -> str:
        """What an answer with status C{code} and C{body} says went wrong;
        raises L{BlobNotFound} if it says that C{key} is not there."""
        raise NotImplementedError(f"{type(self).__name__} must say what errors mean")
