# -*- test-case-name: tests.unit.test_unknown_sizes,tests.integration.test_blobstore_contract -*-
"""
The writer of the remote stores: a blob streamed into a sequence of
outgoing request bodies (one PUT, the parts of a multipart upload, the
chunks of a resumable upload), with backpressure in both directions.

The writer of a blob of known size never holds a whole part or chunk:
bytes go from C{write} into the body of the request being sent, and the
only buffer is the one the producer's gate bounds, by its high water mark
plus one read.  A blob whose size is known only at its end (a request body
without a length) is cut into segments of a fixed length, the last one
shorter; a request body needs its length before its first byte, so each
segment is held until all of it is in, and the buffer is one segment more.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any, Generic, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .._observer import OneShotObserverList
from .._types import BlobInfo
from ._bodies import StreamBody
from ._cleanup import cleanUp
from ._flow import HIGH_WATER, LOW_WATER, Backlog, Share
from ._hasher import Hasher
from ._http import asStoreError
from ._writer import BlobWriter, Use

T = TypeVar("T")


class Transfer(Enum):
    """Where a L{StreamingWriter}'s transfer to the store is."""

    IDLE = "idle"  # nothing asked of the store yet
    BEGINNING = "beginning"  # the transfer is being started (an upload id, a session)
    STREAMING = "streaming"  # segments go out as the bytes come
    COMMITTING = "committing"  # every segment is sent; the digest, then the store's commit
    COMMITTED = "committed"  # the object exists under the key
    FAILED = "failed"  # a request failed, or the writer was aborted


#: Where each state may go.
_NEXT = {
    Transfer.IDLE: {Transfer.BEGINNING, Transfer.FAILED},
    Transfer.BEGINNING: {Transfer.STREAMING, Transfer.FAILED},
    Transfer.STREAMING: {Transfer.COMMITTING, Transfer.FAILED},
    Transfer.COMMITTING: {Transfer.COMMITTED, Transfer.FAILED},
    Transfer.COMMITTED: {Transfer.FAILED},
    Transfer.FAILED: set(),
}


class StreamingWriter(BlobWriter, Generic[T]):
    """
    A blob of C{size} bytes sent as a sequence of requests, each body
    streamed straight from C{write}.

    The last byte of the blob is held back until L{finish} so that the
    remote store cannot commit the object before the web layer decides to;
    until then nothing is visible under the key.

    With C{size} L{None}, the blob is cut into segments of C{step} bytes,
    the last one shorter (an empty blob is one empty segment): a segment is
    sent once a byte beyond it has arrived (so it is known not to be the
    last), and the last one at L{finish}.  The high water mark is then one
    segment higher, so that a whole segment can wait in the buffer.

    Subclasses say how a blob of known size is cut (C{_segments}), how a
    transfer begins (C{_begin}) and what handle it then has (C{_handle}),
    sends a segment (C{_sendSegment}), commits (C{_commit}) and is cleaned
    up (C{_cleanup}).  With C{pipelined} the next segment starts as soon as
    the previous body is fully written, without waiting for its response.
    """

    pipelined = False

    def __init__(
        self,
        key: str,
        size: int | None,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        highWater: int | None = None,
        step: int | None = None,
        share: Share | None = None,
    ) -> None:
        high, low = (HIGH_WATER, LOW_WATER) if highWater is None else (highWater, highWater // 4)
        #: What the marks follow: a blob of unknown size keeps its own, a
        #: whole segment waiting in the buffer whatever its share (which
        #: still counts it among the transfers running).
        marks = share
        if size is None:
            if step is None or step <= 0:
                raise ValueError("a blob of unknown size needs a segment length")
            high, low = high + step, low + step
            marks = None
        super().__init__(key, size, high, low, share)
        if marks is None:
            self._buffer = Backlog(self._gate, high, low)
        self._segmentLength = step
        self._clock: IReactorTime = reactor  # type: ignore[assignment]
        self._hasher = Hasher(["sha256"], reactor, pool, self._gate, high, low, share=marks)
        self._state = Transfer.IDLE
        #: Set while the machine moves, so that what it sets off (a body
        #: ready at once, a request failing at once) does not move it again
        #: from inside: the running loop looks again after every step.
        self._moving = False
        self._pending: deque[bytes] = deque()
        self._segmentList = self._segments() if size is not None else []
        #: Whether every segment is known: at once for a known size, at
        #: L{finish} otherwise.
        self._planned = size is not None
        self._next = 0
        self._body: StreamBody | None = None
        self._results: dict[int, T] = {}
        self._inflight: dict[int, Deferred[T]] = {}
        self._began: Deferred[None] | None = None
        self._finished: OneShotObserverList[BlobInfo] = OneShotObserverList()
        self._started: OneShotObserverList[str | None] = OneShotObserverList()

    # BlobWriter

    def started(self) -> Deferred[str | None]:
        """The transfer's handle once it has begun; L{None} if it fails or is
        aborted first (what its beginning made is then this writer's to
        clean up)."""
        return self._started.whenFired()

    def _accept(self, data: bytes) -> None:
        self._pending.append(data)
        self._hasher.update(data)
        self._advance()

    def _finish(self) -> Deferred[BlobInfo]:
        self._advance()
        return self._finished.whenFired()

    def _discard(self) -> Deferred[None]:
        was = self._state
        self._fail(Failure(CancelledError("the upload was aborted")))
        waits: list[Deferred[Any]] = list(self._inflight.values())
        if was is Transfer.BEGINNING and self._began is not None:
            # Not cancelled: the remote side may create something we must
            # then remove, so wait for its answer.
            waits.append(self._began)
        d: Deferred[Any] = DeferredList(waits, consumeErrors=True)
        return d.addCallback(lambda _: self._cleanUp(committed=was is Transfer.COMMITTED))

    def _fail(self, reason: Failure) -> None:
        if self._state is Transfer.FAILED:
            return
        self._moveTo(Transfer.FAILED)
        self._started.fireIfNotFired(None)
        failure = asStoreError(f"uploading {self.key}", reason)
        super()._fail(failure)
        self._pending.clear()
        for inflight in list(self._inflight.values()):
            inflight.cancel()
        self._finished.fireIfNotFired(failure)

    # The machine

    def _moveTo(self, state: Transfer) -> None:
        if state not in _NEXT[self._state]:
            raise RuntimeError(f"{self.key}: no way from {self._state} to {state}")
        self._state = state

    def _advance(self) -> None:
        """Make every move that can be made now."""
        if self._moving:
            return
        self._moving = True
        try:
            while self._step():
                pass
        finally:
            self._moving = False

    def _plan(self) -> None:
        """The segments of a blob of unknown size known now: each whole one
        once a byte beyond it is in, the rest at L{finish}."""
        if self._planned:
            return
        assert self._segmentLength is not None
        step = self._segmentLength
        while (len(self._segmentList) + 1) * step < self._received:
            self._segmentList.append((len(self._segmentList) * step, step))
        if self._use is Use.FINISHED:
            offset = len(self._segmentList) * step
            self._segmentList.append((offset, self._received - offset))
            self._planned = True

    @property
    def _total(self) -> int | None:
        """The blob's size, once known."""
        return self.size if self.size is not None else self._received if self._planned else None

    def _step(self) -> bool:
        """Make one move, if one can be made; say whether one was."""
        finishing = self._use is Use.FINISHED
        self._plan()
        if self._state is Transfer.IDLE:
            if self.size is None:
                # Begun once the first segment is known: the subclass may
                # choose how to send the blob by its segments.
                if not self._segmentList:
                    return False
            elif not (self._pending or finishing):
                return False
            self._moveTo(Transfer.BEGINNING)
            self._began = self._begin()
            self._began.addCallbacks(self._begun, self._fail)
            return True
        if self._state is not Transfer.STREAMING:
            return False
        body = self._body
        if body is not None and body.remaining == 0:
            self._body = None
            return True
        if body is not None:
            return self._pumpInto(body, finishing)
        if self._next < len(self._segmentList):
            if (self.pipelined or not self._inflight) and (self._pending or finishing):
                self._sendNext()
                return True
            return False
        if finishing and len(self._results) == len(self._segmentList):
            self._startCommit()
            return True
        return False

    def _begun(self, _: object) -> None:
        if self._state is Transfer.BEGINNING:
            self._moveTo(Transfer.STREAMING)
            self._started.fireIfNotFired(self._handle())
            self._advance()

    def _sendNext(self) -> None:
        index = self._next
        self._next += 1
        offset, length = self._segmentList[index]
        self._body = body = StreamBody(length, self._advance)
        d = self._sendSegment(index, offset, length, body)
        self._inflight[index] = d
        d.addCallbacks(
            self._segmentSent, self._segmentFailed, callbackArgs=(index,), errbackArgs=(index,)
        )

    def _pumpInto(self, body: StreamBody, finishing: bool) -> bool:
        """Move pending bytes into the body being sent, if it takes them."""
        if not (self._pending and body.writable):
            return False
        limit = body.remaining
        if self.size is not None and self._next == len(self._segmentList) and not finishing:
            # The last byte waits for finish() (a blob of unknown size has
            # no last segment before).
            limit -= 1
        if limit <= 0:
            return False
        chunk = self._pending[0]
        if len(chunk) > limit:
            self._pending[0] = chunk[limit:]
            chunk = chunk[:limit]
        else:
            self._pending.popleft()
        self._buffer.shrank(len(chunk))
        body.write(chunk)
        return True

    def _segmentSent(self, result: T, index: int) -> None:
        del self._inflight[index]
        self._results[index] = result
        self._advance()

    def _segmentFailed(self, reason: Failure, index: int) -> None:
        del self._inflight[index]
        self._fail(reason)

    def _startCommit(self) -> None:
        # The digest first: once the object is committed, nothing may fail.
        self._moveTo(Transfer.COMMITTING)
        results = [self._results[i] for i in range(len(self._segmentList))]

        def commit(digests: dict[str, bytes]) -> Deferred[BlobInfo]:
            if self._state is not Transfer.COMMITTING:
                raise CancelledError("the upload was aborted while finishing")
            info = BlobInfo(size=self._received, sha256=digests["sha256"].hex())
            return self._commit(results).addCallback(self._committed, info)

        d = self._hasher.digests().addCallback(commit)
        d.addCallbacks(self._finished.fireIfNotFired, self._fail)

    def _committed(self, _: object, info: BlobInfo) -> BlobInfo:
        if self._state is not Transfer.COMMITTING:
            # Aborted while the store committed: the cleanup did not find
            # the object yet, so it is removed now.
            self._cleanUp(committed=True)
            raise CancelledError("the upload was aborted while finishing")
        self._moveTo(Transfer.COMMITTED)
        return info

    def _cleanUp(self, committed: bool) -> Deferred[None]:
        return cleanUp(self._clock, lambda: self._cleanup(committed), self.key)

    # For subclasses

    def _segments(self) -> list[tuple[int, int]]:
        """(offset, length) of each request body of a blob of known size, in order."""
        assert self.size is not None
        return [(0, self.size)]

    def _begin(self) -> Deferred[None]:
        return succeed(None)

    def _handle(self) -> str | None:
        """What finds the begun transfer once this process is gone, if only
        a handle does (see L{IBlobWriter.started})."""
        return None

    def _sendSegment(self, index: int, offset: int, length: int, body: StreamBody) -> Deferred[T]:
        raise NotImplementedError

    def _commit(self, results: list[T]) -> Deferred[None]:
        return succeed(None)

    def _cleanup(self, committed: bool) -> Deferred[None]:
        """Remove whatever the remote side keeps: a pending upload, or the
        object itself if it was committed before the abort."""
        return succeed(None)
