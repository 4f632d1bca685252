# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
A blob writer whose file work happens in a thread pool, behind a bounded
buffer: the reactor thread only queues bytes and counts them, and they are
hashed in the pool beside the writing.  The buffer's bound is the writer's
share of its store's memory budget, at most L{HIGH}.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .._errors import BlobStoreError
from .._types import BlobInfo
from ._flow import Share
from ._hasher import Hasher
from ._writer import BlobWriter

#: The most one write step takes from the queue.  The thread keeps taking
#: steps while bytes are queued, and each step's bytes count as drained as
#: soon as it is done, so that the producer is resumed (and the queue
#: refilled) while the thread works: reading the socket and writing the
#: file overlap instead of taking turns.
STEP = 1024 * 1024

#: The queue's water marks: the producer pauses above HIGH and resumes as
#: soon as the queue is back under LOW, well before the thread runs dry.
#: They are one upload's alone; with others running, both shrink to the
#: writer's share of the budget, and a step to a quarter of it (so that
#: the producer still resumes while the thread writes).
HIGH = 6 * 1024 * 1024
LOW = 4 * 1024 * 1024

#: The first write waits until this much is queued: a small blob is then
#: written, fsynced and renamed in one trip to the pool, at its end.
FIRST_FLUSH = 256 * 1024


class ThreadedBlobWriter(BlobWriter):
    """
    Queues written bytes and drains them in batches in a thread, one batch
    at a time.  Subclasses say where the bytes go with the four
    C{_...InThread} methods, which always run in the pool and never at the
    same time.
    """

    def __init__(
        self,
        key: str,
        size: int | None,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        share: Share | None = None,
    ) -> None:
        super().__init__(key, size, HIGH, LOW, share)
        self._reactor = reactor
        self._pool = pool
        self._hasher = Hasher(["sha256"], reactor, pool, self._gate, HIGH, LOW, STEP, share)
        self._lock = DeferredLock()
        self._pending: deque[bytes] = deque()
        #: What was queued and not yet taken by a write step (about: the
        #: thread takes without counting down).
        self._pendingBytes = 0
        #: The flush queued or running, if any.
        self._flushing: Deferred[None] | None = None
        self._opened = False

    def _accept(self, data: bytes) -> None:
        self._pending.append(data)
        self._pendingBytes += len(data)
        self._hasher.update(data)
        if self._flushing is None and (
            self._opened or self._pendingBytes >= min(FIRST_FLUSH, self._step())
        ):
            self._flushing = self._inThread(self._flush, self._step())

    def _finish(self) -> Deferred[BlobInfo]:
        async def commit() -> BlobInfo:
            digests = await self._hasher.digests()
            # A last flush queued behind any running one drains what is
            # left, and commits in the same trip to the pool.
            await self._inThread(self._flushAndCommit, self._step())
            if self._failure is not None:
                self._failure.raiseException()
            return BlobInfo(size=self._received, sha256=digests["sha256"].hex())

        return Deferred.fromCoroutine(commit())

    def _discard(self) -> Deferred[None]:
        self._pending.clear()
        return self._inThread(self._discardInThread)

    # The thread side

    def _inThread(self, f: Any, *args: object) -> Deferred[Any]:
        return self._lock.run(deferToThreadPool, self._reactor, self._pool, f, *args)

    def _ensureOpen(self) -> None:
        if not self._opened:
            self._opened = True
            self._openInThread()

    def _step(self) -> int:
        """The most one write step takes now."""
        return min(STEP, max(1, self._buffer.high // 4))

    def _flush(self, step: int) -> bool:
        """Write what is queued, step by step; whether all went well (a
        failure is reported to the reactor thread)."""
        # Runs in the pool, step by step while bytes are queued; the reactor
        # appends to the deque meanwhile (append and popleft are atomic).
        try:
            while self._pending and self._aborted is None:
                chunks, n = [], 0
                while self._pending and n < step:
                    chunk = self._pending.popleft()
                    chunks.append(chunk)
                    n += len(chunk)
                try:
                    self._ensureOpen()
                    self._writeInThread(chunks)
                except Exception as e:
                    self._reactor.callFromThread(self._flushFailed, e, n)
                    return False
                self._reactor.callFromThread(self._buffer.shrank, n)
            # Open even when nothing was written: an empty blob is a file too.
            self._ensureOpen()
        except Exception as e:
            self._reactor.callFromThread(self._flushFailed, e, 0)
            return False
        self._reactor.callFromThread(self._flushed)
        return True

    def _flushAndCommit(self, step: int) -> None:
        # The failure reaches the reactor thread before this call's end.
        if self._flush(step) and self._aborted is None:
            try:
                self._commitInThread()
            except Exception as e:
                self._reactor.callFromThread(self._flushFailed, e, 0)

    def _flushed(self) -> None:
        self._pendingBytes = sum(map(len, self._pending))
        if self._pending and self._aborted is None:
            self._flushing = self._inThread(self._flush, self._step())
        else:
            self._flushing = None

    def _flushFailed(self, e: Exception, n: int) -> None:
        self._buffer.shrank(n)
        self._flushing = None
        if not isinstance(e, BlobStoreError):
            e = BlobStoreError(f"writing the blob failed: {e}")
        self._pending.clear()
        self._fail(Failure(e))

    # For subclasses; all run in the pool.

    def _openInThread(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say where bytes go")

    def _writeInThread(self, chunks: list[bytes]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say where bytes go")

    def _commitInThread(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how to commit")

    def _discardInThread(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how to discard")
