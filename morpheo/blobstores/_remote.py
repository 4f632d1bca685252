# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
What the HTTP blob stores (S3, Google Cloud Storage) share: a writer that
streams the incoming bytes into a sequence of outgoing request bodies with
backpressure in both directions, a download pump from an HTTP response into
a consumer, sha256 hashing off the reactor thread, and small-response
reading.

The writer never holds a whole part or chunk: bytes go from C{write} into
the body of the request being sent, and the only buffer is the
L{ProducerGate}'s, bounded by its high water mark plus one read.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    succeed,
)
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IPushProducer,
    IReactorFromThreads,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import (
    Agent,
    HTTP11ClientProtocol,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from .._interfaces import IBlobWriter
from .._types import BlobInfo, BlobStoreError, SizeMismatch
from ._flow import ProducerGate

log = Logger()

T = TypeVar("T")

#: How much of an error or XML response body is read at most.
SMALL_BODY = 1024 * 1024


def describeFailure(reason: Failure) -> str:
    """A short sentence for a network failure, without a traceback."""
    reasons = getattr(reason.value, "reasons", None)
    if reasons:
        inner = [f.getErrorMessage() or f.type.__name__ for f in reasons]
        return "the connection failed: " + "; ".join(inner)
    if reason.check(ConnectError):
        return f"cannot connect: {reason.getErrorMessage()}"
    return reason.getErrorMessage() or reason.type.__name__  # type: ignore[union-attr]


def asStoreError(what: str, reason: Failure) -> Failure:
    """Turn any failure of C{what} into a L{BlobStoreError} naming it."""
    if reason.check(BlobStoreError, CancelledError, SizeMismatch):
        return reason
    return Failure(BlobStoreError(f"{what} failed: {describeFailure(reason)}"))


#: Seconds between the attempts to clean up after a failed upload while the
#: store cannot be reached: from 1 s, doubling, to every minute for an hour.
CLEANUP_RETRIES = (1, 2, 4, 8, 16, 32, *(60,) * 59)


def retryLater(
    clock: IReactorTime,
    attempt: Callable[[], Deferred[None]],
    key: str,
    reason: Failure,
    delays: Iterable[float] = CLEANUP_RETRIES,
) -> None:
    """
    Call C{attempt} again after each of C{delays} until it succeeds, in the
    background: the client has its answer already, and what a failed
    upload leaves in the store (a multipart upload, a committed object) is
    removed once the store is back.
    """
    remaining = iter(delays)

    def again() -> None:
        attempt().addCallbacks(succeeded, failed)

    def succeeded(_: object) -> None:
        log.info("cleaned up {key} after all", key=key)

    def failed(reason: Failure) -> None:
        delay = next(remaining, None)
        if delay is None:
            log.error("giving up cleaning up {key}: {why}", key=key, why=describeFailure(reason))
            return
        clock.callLater(delay, again)

    log.warn(
        "cleaning up {key} failed ({why}); trying again in the background",
        key=key,
        why=describeFailure(reason),
    )
    failed(reason)


#: How much a connection to the store reads at once.  Twisted's 64 KiB
#: makes a download cost the reactor thread almost twice the CPU time, in
#: system calls and callbacks; what is read is written on at once, so this
#: bounds the memory a download holds as well.
READ_SIZE = 1024 * 1024


class _StoreProtocol(HTTP11ClientProtocol):
    def makeConnection(self, transport: ITransport) -> None:
        # The TCP transport is this one, or the one under the TLS layer.
        layer: Any = transport
        for _ in range(3):
            if layer is None:
                break
            if hasattr(layer, "bufferSize"):
                layer.bufferSize = READ_SIZE
            layer = getattr(layer, "transport", None)
        super().makeConnection(transport)


class _QuietFactory(_HTTP11ClientFactory):
    """
    Connections to the store that read in large blocks, without a log line
    for each ("Starting factory ...").
    """

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        return _StoreProtocol(self._quiescentCallback)


def makeAgent(reactor: Any, persistent: int = 8, connectTimeout: float = 30) -> IAgent:
    """
    The HTTP client of a remote store: persistent connections (up to
    C{persistent} idle ones kept) that read L{READ_SIZE} at a time, quiet
    in the log.
    """
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = persistent
    pool._factory = _QuietFactory
    return Agent(reactor, connectTimeout=connectTimeout, pool=pool)


class _SmallBody(Protocol):
    def __init__(self, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._parts: list[bytes] = []
        self._left = limit

    def dataReceived(self, data: bytes) -> None:
        if self._left <= 0:
            return
        self._parts.append(data[: self._left])
        self._left -= len(data)
        if self._left <= 0 and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss) or self._left <= 0:
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


def readSmall(response: IResponse, limit: int = SMALL_BODY) -> Deferred[bytes]:
    """
    Read a response body expected to be small (an error, some XML or JSON),
    keeping at most C{limit} bytes, so a misbehaving server cannot fill the
    memory.
    """
    protocol = _SmallBody(limit)
    response.deliverBody(protocol)
    return protocol.done


class ThreadedHasher:
    """
    sha256 computed in a thread pool, in order, one batch at a time, so the
    reactor thread only queues references to the bytes.  C{onHashed(n)} is
    called on the reactor thread as batches complete.

    A batch goes to the pool once C{batch} bytes are queued (or the digest
    is asked for): a thread hop per network read would cost the reactor
    thread more than the hashing itself.  Whoever waits for C{onHashed} to
    drain its buffer must allow for C{batch} bytes never hashed until more
    come.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        onHashed: Callable[[int], None] = lambda n: None,
        batch: int = 1024 * 1024,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._onHashed = onHashed
        self._batch = batch
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        self._running = False
        self._waiting: list[Deferred[str]] = []

    def update(self, data: bytes) -> None:
        self._pending.append(data)
        self._pendingBytes += len(data)
        if not self._running and self._pendingBytes >= self._batch:
            self._next()

    def hexdigest(self) -> Deferred[str]:
        """Fires with the digest once everything queued is hashed."""
        if not self._running and self._pending:
            self._next()
        if not self._running:
            return succeed(self._hash.hexdigest())
        d: Deferred[str] = Deferred()
        self._waiting.append(d)
        return d

    def _next(self) -> None:
        chunks, self._pending = self._pending, []
        self._pendingBytes = 0
        self._running = True
        d = deferToThreadPool(self._reactor, self._pool, self._run, chunks)
        d.addCallbacks(self._ran, self._crashed)

    def _run(self, chunks: list[bytes]) -> int:
        update = self._hash.update
        for chunk in chunks:
            update(chunk)
        return sum(map(len, chunks))

    def _ran(self, n: int) -> None:
        self._onHashed(n)
        if self._pending and (self._pendingBytes >= self._batch or self._waiting):
            self._next()
            return
        self._running = False
        waiting, self._waiting = self._waiting, []
        digest = self._hash.hexdigest()
        for d in waiting:
            d.callback(digest)

    def _crashed(self, reason: Failure) -> None:  # pragma: no cover
        # hashlib does not fail; a stopped pool is the only way here.
        self._running = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)


@implementer(IBodyProducer)
class StreamBody:
    """
    The body of one outgoing request, C{length} bytes long, fed by a
    L{StreamingWriter}.  The transport pauses and resumes it; the writer
    writes into it only while it is not paused.
    """

    def __init__(self, length: int, onReady: Callable[[], None]) -> None:
        self.length = length
        self.remaining = length
        self.paused = False
        self.stopped = False
        self.consumer: IConsumer | None = None
        self._onReady = onReady
        self._done: Deferred[None] | None = None

    @property
    def writable(self) -> bool:
        return self.consumer is not None and not (self.paused or self.stopped)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        self._done = Deferred()
        if self.remaining == 0:
            self._done.callback(None)
        else:
            self._onReady()
        return self._done

    def write(self, data: bytes) -> None:
        assert self.consumer is not None and self._done is not None
        self.remaining -= len(data)
        self.consumer.write(data)
        if self.remaining == 0 and not self.stopped:
            self._done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._onReady()

    def stopProducing(self) -> None:
        # The request failed or was cancelled; the writer learns it from
        # the request's Deferred.  Ours must not fire any more.
        self.stopped = True


@implementer(IBlobWriter)
class StreamingWriter(Generic[T]):
    """
    A blob of C{size} bytes sent as a sequence of requests (one PUT, the
    parts of a multipart upload, the chunks of a resumable upload), each
    body streamed straight from C{write}.

    The last byte of the blob is held back until L{finish} so that the
    remote store cannot commit the object before the web layer decides to;
    until then nothing is visible under the key.

    Subclasses say how the blob is cut (C{_segments}), how a transfer
    begins (C{_begin}), sends a segment (C{_sendSegment}), commits
    (C{_commit}) and is cleaned up (C{_cleanup}).  With C{pipelined} the
    next segment starts as soon as the previous body is fully written,
    without waiting for its response.
    """

    pipelined = False

    def __init__(
        self,
        key: str,
        size: int,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        highWater: int | None = None,
    ) -> None:
        if size < 0:
            raise ValueError(f"a blob cannot be {size} bytes long")
        self.key = key
        self.size = size
        self._clock: IReactorTime = reactor  # type: ignore[assignment]
        self._gate = (
            ProducerGate() if highWater is None else ProducerGate(highWater, highWater // 4)
        )
        # Unhashed bytes count as buffered: a batch must fit under the low
        # water mark, or a paused producer would wait for bytes never hashed.
        batch = min(1024 * 1024, max(1, self._gate.low // 2))
        self._hasher = ThreadedHasher(reactor, pool, self._hashed, batch)
        self._pending: deque[bytes] = deque()
        self._received = 0
        self._sent = 0
        self._hashedBytes = 0
        self._failure: Failure | None = None
        self._closed = False
        self._finishing = False
        self._committed = False
        self._pumping = False
        self._starting = False
        self._segmentList = self._segments()
        self._next = 0
        self._body: StreamBody | None = None
        self._results: dict[int, T] = {}
        self._inflight: dict[int, Deferred[T]] = {}
        self._began: Deferred[None] | None = None
        self._beginDone = False
        self._whenSent: Deferred[None] | None = None
        self._aborting: Deferred[None] | None = None

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write after finish() or abort()")
        if self._failure is not None:
            self._failure.raiseException()
        if not data:
            return
        if self._received + len(data) > self.size:
            raise SizeMismatch(self.size, self._received + len(data))
        self._received += len(data)
        self._pending.append(data)
        self._hasher.update(data)
        self._account()
        self._advance()

    # IBlobWriter

    def finish(self) -> Deferred[BlobInfo]:
        if self._closed:
            raise RuntimeError("finish() after finish() or abort()")
        self._closed = True
        if self._failure is not None:
            return self._failWith(self._failure)
        if self._received != self.size:
            return self._failWith(Failure(SizeMismatch(self.size, self._received)))
        self._finishing = True
        self._whenSent = Deferred()
        waiting = self._whenSent
        self._advance()
        self._checkAllSent()

        def commit(_: object) -> Deferred[None]:
            results = [self._results[i] for i in range(len(self._segmentList))]
            return self._commit(results)

        def committed(_: object) -> Deferred[str]:
            self._committed = True
            if self._aborting is not None:
                raise CancelledError("the upload was aborted while finishing")
            return self._hasher.hexdigest()

        def info(digest: str) -> BlobInfo:
            return BlobInfo(size=self.size, sha256=digest)

        d = waiting.addCallback(commit).addCallback(committed).addCallback(info)
        return d.addErrback(self._failWith)

    def abort(self) -> Deferred[None]:
        self._closed = True
        if self._aborting is None:
            self._aborting = self._abort()
        d: Deferred[None] = Deferred()

        def done(result: object) -> object:
            d.callback(None)
            return result

        self._aborting.addBoth(done)
        return d

    # The machinery

    def _advance(self) -> None:
        """Start what can start, then move pending bytes into the body."""
        if self._failure is not None or self._aborting is not None:
            return
        if self._began is None:
            if not (self._pending or self._finishing):
                return
            self._began = self._begin()
            self._began.addCallbacks(self._begun, self._fail)
        if self._beginDone:
            self._startSegment()
            self._pump()

    def _begun(self, _: object) -> None:
        self._beginDone = True
        self._advance()

    def _startSegment(self) -> None:
        while True:
            if self._starting or self._body is not None:
                return
            if self._next >= len(self._segmentList):
                return
            if not self.pipelined and self._inflight:
                return
            if not (self._pending or self._finishing):
                return
            index = self._next
            self._next += 1
            offset, length = self._segmentList[index]
            body = StreamBody(length, self._pump)
            self._body = body
            # A connection at hand may take the whole body before
            # _sendSegment returns: the segment is not in flight yet, and
            # the next must not start (unpipelined) until it is.
            self._starting = True
            try:
                d = self._sendSegment(index, offset, length, body)
            finally:
                self._starting = False
            self._inflight[index] = d
            d.addCallbacks(
                self._segmentSent, self._segmentFailed, callbackArgs=(index,), errbackArgs=(index,)
            )
            if self._body is body:
                return
            # Written whole already: on to the next one, if it may start.

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._pending and self._failure is None:
                body = self._body
                if body is None or not body.writable:
                    break
                limit = body.remaining
                if self._next == len(self._segmentList) and not self._finishing:
                    limit -= 1  # the last byte waits for finish()
                if limit <= 0:
                    break
                chunk = self._pending[0]
                if len(chunk) > limit:
                    self._pending[0] = chunk[limit:]
                    chunk = chunk[:limit]
                else:
                    self._pending.popleft()
                self._sent += len(chunk)
                if body.remaining == len(chunk):
                    self._body = None
                body.write(chunk)
                if self._body is None:
                    self._startSegment()
        finally:
            self._pumping = False
        self._account()

    def _segmentSent(self, result: T, index: int) -> None:
        del self._inflight[index]
        self._results[index] = result
        if self._failure is None:
            self._advance()
            self._checkAllSent()

    def _segmentFailed(self, reason: Failure, index: int) -> None:
        del self._inflight[index]
        self._fail(reason)

    def _checkAllSent(self) -> None:
        if (
            self._whenSent is not None
            and len(self._results) == len(self._segmentList)
            and self._failure is None
        ):
            d, self._whenSent = self._whenSent, None
            d.callback(None)

    def _hashed(self, n: int) -> None:
        self._hashedBytes += n
        self._account()

    def _account(self) -> None:
        """Bytes held are those neither sent nor hashed yet."""
        level = self._received - min(self._sent, self._hashedBytes)
        delta = level - self._gate.buffered
        if delta > 0:
            self._gate.grew(delta)
        elif delta < 0:
            self._gate.shrank(-delta)

    def _fail(self, reason: Failure) -> None:
        if self._failure is not None:
            return
        self._failure = asStoreError(f"uploading {self.key}", reason)
        self._pending.clear()
        for inflight in list(self._inflight.values()):
            inflight.cancel()
        self._gate.release()
        if self._whenSent is not None:
            d, self._whenSent = self._whenSent, None
            d.errback(self._failure)

    def _failWith(self, reason: Failure) -> Deferred[Any]:
        return self.abort().addCallback(lambda _: reason)

    def _abort(self) -> Deferred[None]:
        self._fail(Failure(CancelledError("the upload was aborted")))
        waits: list[Deferred[Any]] = list(self._inflight.values())
        if self._began is not None and not self._beginDone:
            # Not cancelled: the remote side may create something we must
            # then remove, so wait for its answer.
            waits.append(self._began)
        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)

        def cleanup(_: object) -> Deferred[None]:
            return self._cleanup(self._beginDone, self._committed)

        def failed(reason: Failure) -> None:
            # The store is likely down (which may be why we abort): try
            # again later rather than leave an upload or an object behind.
            retryLater(
                self._clock,
                lambda: self._cleanup(self._beginDone, self._committed),
                self.key,
                reason,
            )

        return d.addCallback(cleanup).addErrback(failed)

    # For subclasses

    def _segments(self) -> list[tuple[int, int]]:
        """(offset, length) of each request body, in order."""
        return [(0, self.size)]

    def _begin(self) -> Deferred[None]:
        return succeed(None)

    def _sendSegment(self, index: int, offset: int, length: int, body: StreamBody) -> Deferred[T]:
        raise NotImplementedError

    def _commit(self, results: list[T]) -> Deferred[None]:
        return succeed(None)

    def _cleanup(self, begun: bool, committed: bool) -> Deferred[None]:
        """Remove whatever the remote side keeps: a pending upload, or the
        object itself if it was committed before the abort."""
        return succeed(None)


@implementer(IPushProducer)
class _Download(Protocol):
    """
    Copies a response body into a consumer; the consumer's pauses pause the
    response's transport, so the socket stops being read.
    """

    def __init__(self, consumer: IConsumer, expected: int | None, what: str) -> None:
        self.consumer = consumer
        self.done: Deferred[None] = Deferred(lambda d: self.stopProducing())
        self._expected = expected
        self._what = what
        self._received = 0
        self._paused = False
        self._finished = False

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)
        if self._paused:
            transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        self._received += len(data)
        self.consumer.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished:
            return
        if reason.check(ResponseDone, PotentialDataLoss) and (
            self._expected is None or self._received == self._expected
        ):
            self._end(None)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._end(
                Failure(
                    BlobStoreError(
                        f"{self._what} ended after {self._received} of {self._expected} bytes"
                    )
                )
            )
        else:
            self._end(asStoreError(self._what, reason))

    def _end(self, result: Failure | None) -> None:
        self._finished = True
        self.consumer.unregisterProducer()
        if result is None:
            self.done.callback(None)
        else:
            self.done.errback(result)

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        if self._finished:
            return
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        self._end(Failure(CancelledError("the download was stopped")))


def streamResponse(
    response: IResponse, consumer: IConsumer, what: str, want: int | None = None
) -> Deferred[None]:
    """
    Stream C{response}'s body into C{consumer} with flow control; fires when
    all of it (as many bytes as the response announced) has been written.
    A range request (C{want} bytes) that the server would answer short fails
    before any byte is written.
    """
    length = response.length
    expected = None if length is UNKNOWN_LENGTH else int(length)
    if want is not None and expected is not None and expected != want:
        response.deliverBody(Protocol())  # drop the connection's body
        raise BlobStoreError(f"{what}: asked for {want} bytes, the store has {expected}")
    protocol = _Download(consumer, expected, what)
    consumer.registerProducer(protocol, True)
    response.deliverBody(protocol)
    return protocol.done


@implementer(IPushProducer)
class EmptyProducer:
    """Registers with a consumer and unregisters at once: a zero-byte read."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def produceNothing(self, consumer: IConsumer) -> None:
        consumer.registerProducer(self, True)
        consumer.unregisterProducer()


@implementer(IBodyProducer)
class BytesBody:
    """A small request body already in memory (XML, JSON), written at once."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._data:
            consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
