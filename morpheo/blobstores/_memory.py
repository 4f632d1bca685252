# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Blobs in memory, for development and tests.

It behaves like the real stores where the web layer can tell: writes are
drained one reactor turn later, so a fast producer is paused and resumed
as with a remote store; nothing is visible before L{_MockWriter.finish};
reads go out in blocks and stop while the consumer is paused.  Setting
L{MemoryBlobStore.down} makes every operation fail as an unreachable backend
would.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .._interfaces import IBlobStore, IBlobWriter
from .._types import BlobInfo, BlobNotFound, BlobStoreError, SizeMismatch
from ._flow import ProducerGate

BLOCK = 64 * 1024


@implementer(IBlobWriter)
class _MockWriter:
    def __init__(self, store: MemoryBlobStore, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self._store = store
        self._gate = ProducerGate(store.highWater, store.highWater // 4)
        self._pending: list[bytes] = []
        self._chunks: list[bytes] = []
        self._received = 0
        self._hash = hashlib.sha256()
        self._drain: IDelayedCall | None = None
        self._closed = False
        self._failure: Failure | None = None

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._store.down and self._failure is None:
            self._failure = Failure(BlobStoreError("the mock blob store is down"))
            self._gate.release()
        if self._failure is not None:
            self._failure.raiseException()
        if self._closed:
            raise RuntimeError("write after finish() or abort()")
        if not data:
            return
        if self._received + len(data) > self.size:
            raise SizeMismatch(self.size, self._received + len(data))
        self._received += len(data)
        self._pending.append(data)
        self._gate.grew(len(data))
        if self._drain is None:
            self._drain = self._store._clock.callLater(0, self._drained)

    def _drained(self) -> None:
        self._drain = None
        pending, self._pending = self._pending, []
        for chunk in pending:
            self._hash.update(chunk)
        self._chunks.extend(pending)
        self._gate.shrank(sum(map(len, pending)))

    def finish(self) -> Deferred[BlobInfo]:
        if self._closed:
            raise RuntimeError("finish() after finish() or abort()")
        self._closed = True
        if self._failure is None and self._store.down:
            self._failure = Failure(BlobStoreError("the mock blob store is down"))
        if self._failure is not None:
            reason = self._failure
            return self.abort().addCallback(lambda _: reason)
        if self._received != self.size:
            mismatch = SizeMismatch(self.size, self._received)
            return self.abort().addCallback(lambda _: Failure(mismatch))
        if self._drain is not None:
            self._drain.cancel()
        self._drained()
        self._store._blobs[self.key] = b"".join(self._chunks)
        self._chunks = []
        return succeed(BlobInfo(size=self.size, sha256=self._hash.hexdigest()))

    def abort(self) -> Deferred[None]:
        self._closed = True
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self._pending = []
        self._chunks = []
        return succeed(None)


@implementer(IPushProducer)
class _MockReader:
    """Writes C{data} in blocks, one per reactor turn, while not paused."""

    def __init__(self, data: memoryview, consumer: IConsumer, clock: IReactorTime) -> None:
        self._data = data
        self._consumer = consumer
        self._clock = clock
        self._paused = False
        self._call: IDelayedCall | None = None
        self.done: Deferred[None] = Deferred(lambda d: self.stopProducing())

    def start(self) -> Deferred[None]:
        self._consumer.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if self._call is None and not self._paused and not self.done.called:
            self._call = self._clock.callLater(0, self._step)

    def _step(self) -> None:
        self._call = None
        if not self._data:
            self._consumer.unregisterProducer()
            self.done.callback(None)
            return
        block, self._data = self._data[:BLOCK], self._data[BLOCK:]
        self._consumer.write(bytes(block))
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        if self.done.called:
            return
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._consumer.unregisterProducer()
        self.done.errback(CancelledError("the transfer was stopped"))


@implementer(IBlobStore)
class MemoryBlobStore:
    """
    Blobs in a dict, keyed like the real stores.  Time goes through
    C{clock} (the reactor, or a L{twisted.internet.task.Clock} in tests).
    """

    name = "mock"

    def __init__(self, clock: IReactorTime, highWater: int = 4 * 1024 * 1024) -> None:
        self._clock = clock
        self._blobs: dict[str, bytes] = {}
        self.highWater = highWater
        self.down = False

    def _unavailable(self) -> Deferred[Any]:
        return fail(BlobStoreError("the mock blob store is down"))

    def keys(self) -> list[str]:
        """What is committed, for tests."""
        return sorted(self._blobs)

    def writer(self, key: str, size: int) -> _MockWriter:
        if size < 0:
            raise ValueError(f"a blob cannot be {size} bytes long")
        return _MockWriter(self, key, size)

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        try:
            data = memoryview(self._blobs[key])
        except KeyError:
            return fail(BlobNotFound(key))
        end = len(data) if length is None else offset + length
        if offset > len(data) or end > len(data):
            return fail(BlobStoreError(f"{key} has no bytes {offset}-{end - 1}"))
        return _MockReader(data[offset:end], consumer, self._clock).start()

    def delete(self, key: str) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        self._blobs.pop(key, None)
        return succeed(None)

    def check(self) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        return succeed(None)
