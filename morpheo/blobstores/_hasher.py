# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Digests of a blob as it streams by, computed in a thread pool: hashing a
large blob on the reactor thread would stall every other request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .._observer import OneShotObserverList
from ._flow import HIGH_WATER, LOW_WATER, Backlog, ProducerGate, Share


class Hasher:
    """
    The digests named C{algorithms} of the bytes given to L{update},
    computed in C{pool} one batch at a time, in order, so that the reactor
    thread only queues references to the bytes.

    The bytes queued and not hashed yet are a L{Backlog} on C{gate}: a
    producer faster than the hashing is paused above C{high} and resumed at
    C{low}.  A batch goes to the pool once C{batch} bytes are queued (or the
    digests are asked for): a thread hop per network read would cost the
    reactor thread more than the hashing itself.  A batch stays under the
    low water mark, or a paused producer would wait for bytes never hashed;
    with a C{share} of a memory budget the marks follow it, and so does
    the batch.
    """

    def __init__(
        self,
        algorithms: Iterable[str],
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        gate: ProducerGate,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
        batch: int = 1024 * 1024,
        share: Share | None = None,
        start: Mapping[str, Any] | None = None,
    ) -> None:
        #: With C{start}, the hashes go on from those objects (hashlib's),
        #: which are updated in place.
        self._hashes = {name: hashlib.new(name) for name in algorithms}
        if start is not None:
            self._hashes.update(start)
        self._reactor = reactor
        self._pool = pool
        self._backlog = Backlog(gate, high, low, share)
        self._most = batch
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        self._running: Deferred[int] | None = None
        self._failure: Failure | None = None
        self._digests: OneShotObserverList[dict[str, bytes]] | None = None

    def update(self, data: bytes) -> None:
        if self._digests is not None:
            raise RuntimeError("update() after digests()")
        self._pending.append(data)
        self._pendingBytes += len(data)
        self._backlog.grew(len(data))
        if self._running is None and self._pendingBytes >= self._batch:
            self._next()

    @property
    def _batch(self) -> int:
        return min(self._most, max(1, self._backlog.low // 2))

    def digests(self) -> Deferred[dict[str, bytes]]:
        """Fires with every digest once all that was queued is hashed;
        nothing more may be queued."""
        if self._digests is None:
            self._digests = OneShotObserverList()
            if self._running is None:
                self._next()
        return self._digests.whenFired()

    def _next(self) -> None:
        if self._failure is not None or not self._pending:
            self._running = None
            if self._digests is not None:
                self._digests.fireIfNotFired(
                    self._failure or {n: h.digest() for n, h in self._hashes.items()}
                )
            return
        chunks, self._pending, self._pendingBytes = self._pending, [], 0
        self._running = deferToThreadPool(self._reactor, self._pool, self._hashInThread, chunks)
        self._running.addCallbacks(self._hashed, self._crashed)

    def _hashInThread(self, chunks: list[bytes]) -> int:
        hashes = list(self._hashes.values())
        for chunk in chunks:
            for h in hashes:
                h.update(chunk)
        return sum(map(len, chunks))

    def _hashed(self, n: int) -> None:
        self._backlog.shrank(n)
        if self._pendingBytes >= self._batch or self._digests is not None:
            self._next()
        else:
            self._running = None

    def _crashed(self, reason: Failure) -> None:  # pragma: no cover
        # hashlib does not fail; a stopped pool is the only way here.
        self._failure = reason
        self._backlog.shrank(self._backlog.level)
        self._next()
