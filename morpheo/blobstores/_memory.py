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

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IReactorTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .._errors import BlobNotFound, BlobStoreError
from .._interfaces import IBlobStore
from .._types import BlobInfo
from ._producer import BlobProducer
from ._writer import BlobWriter

BLOCK = 64 * 1024


class _MockWriter(BlobWriter):
    def __init__(self, store: MemoryBlobStore, key: str, size: int | None) -> None:
        super().__init__(key, size, store.highWater, store.highWater // 4)
        self._store = store
        self._pending: list[bytes] = []
        self._chunks: list[bytes] = []
        self._hash = hashlib.sha256()
        self._drain: IDelayedCall | None = None

    def write(self, data: bytes) -> None:
        self._failIfDown()
        super().write(data)

    def finish(self) -> Deferred[BlobInfo]:
        self._failIfDown()
        return super().finish()

    def _failIfDown(self) -> None:
        if self._store.down:
            self._fail(Failure(BlobStoreError("the mock blob store is down")))

    def _accept(self, data: bytes) -> None:
        self._pending.append(data)
        if self._drain is None:
            self._drain = self._store._clock.callLater(0, self._drained)

    def _drained(self) -> None:
        self._drain = None
        pending, self._pending = self._pending, []
        for chunk in pending:
            self._hash.update(chunk)
        self._chunks.extend(pending)
        self._buffer.shrank(sum(map(len, pending)))

    def _finish(self) -> Deferred[BlobInfo]:
        if self._drain is not None:
            self._drain.cancel()
        self._drained()
        self._store._blobs[self.key] = b"".join(self._chunks)
        self._chunks = []
        return succeed(BlobInfo(size=self._received, sha256=self._hash.hexdigest()))

    def _discard(self) -> Deferred[None]:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self._pending = []
        self._chunks = []
        return succeed(None)


class _MockReader(BlobProducer):
    """Writes C{data} in blocks, one per reactor turn, while not paused."""

    def __init__(self, data: memoryview, consumer: IConsumer, clock: IReactorTime) -> None:
        super().__init__(consumer)
        self._data = data
        self._clock = clock
        self._call: IDelayedCall | None = None

    def _go(self) -> None:
        if self._call is None and not self.paused and not self.done.called:
            self._call = self._clock.callLater(0, self._step)

    def _halt(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _step(self) -> None:
        self._call = None
        if not self._data:
            self._end()
            return
        block, self._data = self._data[:BLOCK], self._data[BLOCK:]
        self.consumer.write(bytes(block))
        self._go()


@implementer(IBlobStore)
class MemoryBlobStore:
    """
    Blobs in a dict, keyed like the real stores.  Time goes through
    C{clock} (the reactor, or a L{twisted.internet.task.Clock} in tests).
    """

    name = "mock"
    #: Its failures are this service's own (500), not a backend's (502).
    remote = False

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

    def writer(self, key: str, size: int | None) -> _MockWriter:
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
        return _MockReader(data[offset:end], consumer, self._clock).beginProducing()

    def delete(self, key: str) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        self._blobs.pop(key, None)
        return succeed(None)

    def check(self) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        return succeed(None)
