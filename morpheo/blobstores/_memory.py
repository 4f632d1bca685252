# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Blobs in memory, for development and tests.

It behaves like the real stores where the web layer can tell: writes are
drained one reactor turn later, so a fast producer is paused and resumed
as with a remote store; nothing is visible before L{_MockWriter.finish};
reads go out in blocks and stop while the consumer is paused; keys are
listed in pages, by the clock's time of their commit.  Setting
L{MemoryBlobStore.down} makes every operation fail as an unreachable backend
would.  With C{sessions}, each write opens a session as a Google Cloud
Storage upload does, known by its handle only and kept until its writer
ends it or L{MemoryBlobStore.abandon} is given that handle: what a killed
process leaves, for the tests of the sweep.  Resumable writes
(L{IResumableBlobStore}) are held apart, each by a handle its state names,
until concluded or cancelled (L{MemoryBlobStore.openWrites}).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import uuid
from collections.abc import AsyncGenerator
from itertools import count
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IReactorTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .._errors import BlobNotFound, BlobStoreError, SizeMismatch
from .._interfaces import (
    KEY_PAGE,
    IAbandonableBlobStore,
    IResumableBlobStore,
    ISweepableBlobStore,
)
from .._kinds import isBlobKey
from .._observer import OneShotObserverList
from .._types import Appended, BlobInfo
from ._appending import Appender
from ._flow import MemoryBudget
from ._producer import BlobProducer
from ._writer import BlobWriter

BLOCK = 64 * 1024


class _MockWriter(BlobWriter):
    def __init__(self, store: MemoryBlobStore, key: str, size: int | None) -> None:
        super().__init__(key, size, store.highWater, store.highWater // 4, store.budget.join())
        self._store = store
        self._pending: list[bytes] = []
        self._chunks: list[bytes] = []
        self._hash = hashlib.sha256()
        self._drain: IDelayedCall | None = None
        self._session: str | None = None
        self._started: OneShotObserverList[str | None] = OneShotObserverList()

    def started(self) -> Deferred[str | None]:
        if not self._store.sessions:
            return super().started()
        return self._started.whenFired()

    def _begin(self) -> None:
        """With sessions, the first write (or the finish of an empty blob)
        opens one, as a remote upload begins."""
        if self._store.sessions and not self._started.fired:
            self._session = self._store._openSession(self.key)
            self._started.fire(self._session)

    def _end(self) -> None:
        self._started.fireIfNotFired(None)
        if self._session is not None:
            self._store._sessionKeys.pop(self._session, None)
            self._session = None

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
        self._begin()
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
        self._begin()
        if self._drain is not None:
            self._drain.cancel()
        self._drained()
        self._store._blobs[self.key] = b"".join(self._chunks)
        self._store._committed[self.key] = self._store._clock.seconds()
        self._chunks = []
        self._end()
        return succeed(BlobInfo(size=self._received, sha256=self._hash.hexdigest()))

    def _discard(self) -> Deferred[None]:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self._pending = []
        self._chunks = []
        self._end()
        return succeed(None)


class _MockAppender(Appender):
    """
    Holds a request's bytes apart, drained one reactor turn later (so that
    a fast producer is paused and resumed), and adds them to the write at
    L{close}, or drops them.
    """

    def __init__(
        self, store: MemoryBlobStore, handle: str, state: str, offset: int, end: int | None
    ) -> None:
        high = store.highWater
        super().__init__(state, offset, end, high, high // 4, store.budget.join())
        self._store = store
        self._handle = handle
        self._pending: list[bytes] = []
        self._chunks: list[bytes] = []
        self._drain: IDelayedCall | None = None

    def write(self, data: bytes) -> None:
        if self._store.down:
            self._fail(Failure(BlobStoreError("the mock blob store is down")))
        super().write(data)

    def _accept(self, data: bytes) -> None:
        self._pending.append(data)
        if self._drain is None:
            self._drain = self._store._clock.callLater(0, self._drained)

    def _drained(self) -> None:
        self._drain = None
        pending, self._pending = self._pending, []
        self._chunks.extend(pending)
        self._buffer.shrank(sum(map(len, pending)))

    def _close(self, keep: bool) -> Deferred[Appended]:
        if self._drain is not None:
            self._drain.cancel()
        self._drained()
        chunks, self._chunks = self._chunks, []
        if self._store.down or self._failure is not None:
            return self._store._unavailable()
        held = self._store._writes.get(self._handle)
        if held is None:
            return fail(BlobStoreError(f"no write {self._handle}"))
        if len(held) < self.offset:
            return fail(BlobStoreError(f"{self._handle} holds fewer than {self.offset} bytes"))
        del held[self.offset :]
        if keep:
            for chunk in chunks:
                held.extend(chunk)
        return succeed(Appended(self.state, len(held)))


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


@implementer(IAbandonableBlobStore, ISweepableBlobStore, IResumableBlobStore)
class MemoryBlobStore:
    """
    Blobs in a dict, keyed like the real stores.  Time goes through
    C{clock} (the reactor, or a L{twisted.internet.task.Clock} in tests);
    with C{sessions}, writes open sessions (see the module).
    """

    name = "mock"
    #: Its failures are this service's own (500), not a backend's (502).
    remote = False
    #: This process's own.
    shared = False

    def __init__(
        self,
        clock: IReactorTime,
        highWater: int = 4 * 1024 * 1024,
        sessions: bool = False,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._clock = clock
        self._blobs: dict[str, bytes] = {}
        #: When each blob was committed, by the clock.
        self._committed: dict[str, float] = {}
        self.highWater = highWater
        self.sessions = sessions
        #: The key of each session still open, by handle.
        self._sessionKeys: dict[str, str] = {}
        self._numbers = count(1)
        #: What makes its writes' states its own, and no other mock store's.
        self._identity = uuid.uuid4().hex[:12]
        #: The bytes of each resumable write in progress, by handle.
        self._writes: dict[str, bytearray] = {}
        self.budget = MemoryBudget() if budget is None else budget
        self.down = False

    def _openSession(self, key: str) -> str:
        handle = f"mock-session:{next(self._numbers)}"
        self._sessionKeys[handle] = key
        return handle

    def openWrites(self) -> dict[str, int]:
        """The resumable writes neither concluded nor cancelled, by handle,
        with the bytes each holds: for tests."""
        return {handle: len(held) for handle, held in self._writes.items()}

    def _handle(self, state: str, key: str) -> str:
        """The write C{state} names, if it is one of this store's to C{key}."""
        try:
            parsed = json.loads(state)
            handle, stateKey = parsed["write"], parsed["key"]
        except (ValueError, TypeError, KeyError):
            handle = stateKey = None
        if (
            not isinstance(handle, str)
            or not handle.startswith(f"mock-write:{self._identity}:")
            or stateKey != key
        ):
            raise BlobStoreError("not the state of this mock store's resumable write to that key")
        return handle

    def begin(self, key: str, size: int | None) -> Deferred[str]:
        if self.down:
            return self._unavailable()
        handle = f"mock-write:{self._identity}:{next(self._numbers)}"
        self._writes[handle] = bytearray()
        return succeed(json.dumps({"write": handle, "key": key}))

    def append(
        self, key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> _MockAppender:
        return _MockAppender(self, self._handle(state, key), state, offset, end)

    def conclude(self, key: str, state: str, size: int) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        handle = self._handle(state, key)
        held = self._writes.get(handle)
        if held is None:
            if len(self._blobs.get(key, b"")) == size and key in self._blobs:
                return succeed(None)
            return fail(BlobStoreError(f"no write {handle}"))
        if len(held) != size:
            return fail(SizeMismatch(size, len(held)))
        del self._writes[handle]
        self._blobs[key] = bytes(held)
        self._committed[key] = self._clock.seconds()
        return succeed(None)

    def cancel(self, key: str, state: str) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        self._writes.pop(self._handle(state, key), None)
        return succeed(None)

    def openSessions(self) -> dict[str, str]:
        """The sessions no writer ended and nothing abandoned, by handle: for tests."""
        return dict(self._sessionKeys)

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

    def stat(self, key: str) -> Deferred[int]:
        if self.down:
            return self._unavailable()
        if key not in self._blobs:
            return fail(BlobNotFound(key))
        return succeed(len(self._blobs[key]))

    def delete(self, key: str) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        self._blobs.pop(key, None)
        self._committed.pop(key, None)
        return succeed(None)

    def check(self) -> Deferred[None]:
        if self.down:
            return self._unavailable()
        return succeed(None)

    def sweepTemporary(self, olderThan: float = 0.0) -> Deferred[list[str]]:
        """Nothing to remove: an unfinished write is gone with its writer."""
        if self.down:
            return self._unavailable()
        return succeed([])

    async def listKeys(
        self, olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        """
        The keys in order, each page the next C{pageSize} after the last
        key of the one before: blobs deleted meanwhile change nothing.
        """
        after = ""
        while True:
            if self.down:
                raise BlobStoreError("the mock blob store is down")
            limit = self._clock.seconds() - olderThan
            page = heapq.nsmallest(
                pageSize,
                (
                    key
                    for key, committed in self._committed.items()
                    if key > after and committed <= limit and isBlobKey(key)
                ),
            )
            if not page:
                return
            yield page
            after = page[-1]

    def abandon(self, key: str, handle: str | None = None) -> Deferred[None]:
        """The blob under C{key}, and the session C{handle} names if it is
        one of this store's, for that key."""
        if self.down:
            return self._unavailable()
        if handle is not None and self._sessionKeys.get(handle) == key:
            del self._sessionKeys[handle]
        self._blobs.pop(key, None)
        return succeed(None)
