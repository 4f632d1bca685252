# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
A blob writer whose file work happens in a thread pool, behind a bounded
buffer: the reactor thread only queues bytes and counts them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IProducer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._interfaces import IBlobWriter
from .._types import BlobInfo, BlobStoreError, SizeMismatch
from ._flow import ProducerGate

#: The most one write-and-hash step takes from the queue.  The thread keeps
#: taking steps while bytes are queued, and each step's bytes count as
#: drained as soon as it is done, so that the producer is resumed (and the
#: queue refilled) while the thread works: reading the socket and writing the
#: file overlap instead of taking turns.
STEP = 1024 * 1024

#: The queue's water marks: the producer pauses above HIGH and resumes as
#: soon as the queue is back under LOW, well before the thread runs dry.
HIGH = 6 * 1024 * 1024
LOW = 4 * 1024 * 1024


@implementer(IBlobWriter)
class ThreadedBlobWriter:
    """
    Queues written bytes and drains them in batches in a thread, one batch
    at a time, hashing as it goes.  Subclasses say where the bytes go with
    the four C{_...InThread} methods, which always run in the pool and never
    at the same time.
    """

    def __init__(self, key: str, size: int, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self.key = key
        self.size = size
        self._reactor = reactor
        self._pool = pool
        self._gate = ProducerGate(HIGH, LOW)
        self._lock = DeferredLock()
        self._pending: deque[bytes] = deque()
        self._flushing = False
        self._received = 0
        self._hash = hashlib.sha256()
        self._failure: Failure | None = None
        self._opened = False
        self._closed = False
        self._aborted: Deferred[None] | None = None

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            self._failure.raiseException()
        if self._closed:
            raise RuntimeError("write after finish() or abort()")
        if not data:
            return
        self._received += len(data)
        if self._received > self.size:
            raise SizeMismatch(self.size, self._received)
        self._pending.append(data)
        self._gate.grew(len(data))
        if not self._flushing:
            self._flushing = True
            self._inThread(self._flush)

    # IBlobWriter

    def finish(self) -> Deferred[BlobInfo]:
        if self._closed:
            raise RuntimeError("finish() after finish() or abort()")
        self._closed = True
        if self._received != self.size:
            return self._failWith(SizeMismatch(self.size, self._received))

        def commit(_: object) -> Deferred[BlobInfo]:
            if self._failure is not None:
                return self._failWith(self._failure)
            return self._inThread(self._commit)

        # A last flush queued behind any running one drains what is left.
        return self._inThread(self._flush).addCallback(commit)

    def abort(self) -> Deferred[None]:
        self._closed = True
        if self._aborted is None:
            self._pending.clear()
            self._aborted = self._inThread(self._discardInThread)
        d: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            # Every caller hears when the discard is over; none sees its errors.
            d.callback(None)
            return result

        self._aborted.addBoth(relay)
        return d

    # The thread side

    def _inThread(self, f: Any, *args: object) -> Deferred[Any]:
        return self._lock.run(deferToThreadPool, self._reactor, self._pool, f, *args)

    def _ensureOpen(self) -> None:
        if not self._opened:
            self._opened = True
            self._openInThread()

    def _flush(self) -> None:
        # Runs in the pool, step by step while bytes are queued; the reactor
        # appends to the deque meanwhile (append and popleft are atomic).
        try:
            while self._pending and self._aborted is None:
                chunks, n = [], 0
                while self._pending and n < STEP:
                    chunk = self._pending.popleft()
                    chunks.append(chunk)
                    n += len(chunk)
                try:
                    self._ensureOpen()
                    self._writeInThread(chunks)
                    for chunk in chunks:
                        self._hash.update(chunk)
                except Exception as e:
                    self._reactor.callFromThread(self._flushFailed, e, n)
                    return
                self._reactor.callFromThread(self._gate.shrank, n)
            # Open even when nothing was written: an empty blob is a file too.
            self._ensureOpen()
        except Exception as e:
            self._reactor.callFromThread(self._flushFailed, e, 0)
            return
        self._reactor.callFromThread(self._flushed)

    def _flushed(self) -> None:
        if self._pending and self._aborted is None:
            self._inThread(self._flush)
        else:
            self._flushing = False

    def _flushFailed(self, e: Exception, n: int) -> None:
        self._gate.shrank(n)
        self._flushing = False
        if not isinstance(e, BlobStoreError):
            e = BlobStoreError(f"writing the blob failed: {e}")
        self._failure = Failure(e)
        self._pending.clear()
        self._gate.release()

    def _commit(self) -> BlobInfo:
        self._commitInThread()
        return BlobInfo(size=self._received, sha256=self._hash.hexdigest())

    def _failWith(self, reason: BaseException | Failure) -> Deferred[Any]:
        failure = reason if isinstance(reason, Failure) else Failure(reason)
        return self.abort().addCallback(lambda _: failure)

    # For subclasses; all run in the pool.

    def _openInThread(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say where bytes go")

    def _writeInThread(self, chunks: list[bytes]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say where bytes go")

    def _commitInThread(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how to commit")

    def _discardInThread(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say how to discard")
