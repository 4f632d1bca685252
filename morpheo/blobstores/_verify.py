# -*- test-case-name: tests.integration.test_objects -*-
"""
Checking a blob against the digest its client stated, before it is
committed, for digests the blob store does not compute itself (it always
computes sha256).
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IProducer, IPushProducer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._interfaces import IBlobWriter
from .._types import APIError, BlobInfo
from ._flow import HIGH_WATER, LOW_WATER


class DigestMismatch(APIError):
    def __init__(self, what: str) -> None:
        super().__init__(400, f"the blob does not match its stated {what}: nothing was stored")


@implementer(IBlobWriter, IPushProducer)
class VerifyingWriter:
    """
    Wraps a writer: passes every byte on, hashes it in a thread pool, and
    commits only if the digests match.

    It stands between the request body and the wrapped writer as a producer
    too, pausing the body while either the wrapped writer or its own hashing
    is behind, so memory stays bounded whichever is slower.
    """

    def __init__(
        self,
        inner: IBlobWriter,
        expected: dict[str, bytes],
        reactor: IReactorFromThreads,
        pool: ThreadPool,
    ) -> None:
        self.inner = inner
        self.key = inner.key
        self._expected = expected
        self._hashes = {name: hashlib.new(name) for name in expected}
        self._reactor = reactor
        self._pool = pool
        self._lock = DeferredLock()
        self._pending: list[bytes] = []
        self._backlog = 0
        self._hashing = False
        self._producer: IPushProducer | None = None
        self._innerPaused = False
        self._behind = False
        self._paused = False

    # IConsumer, for the request body

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        assert IPushProducer.providedBy(producer) and streaming
        self._producer = producer
        self.inner.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        self.inner.unregisterProducer()
        self._producer = None

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        self._pending.append(data)
        self._backlog += len(data)
        if self._backlog > HIGH_WATER:
            self._behind = True
            self._update()
        if not self._hashing:
            self._hashing = True
            self._lock.run(deferToThreadPool, self._reactor, self._pool, self._hash)

    def _hash(self) -> None:
        chunks, self._pending = self._pending, []
        for chunk in chunks:
            for h in self._hashes.values():
                h.update(chunk)
        self._reactor.callFromThread(self._hashed, sum(map(len, chunks)))

    def _hashed(self, n: int) -> None:
        self._backlog -= n
        if self._behind and self._backlog <= LOW_WATER:
            self._behind = False
            self._update()
        if self._pending:
            self._lock.run(deferToThreadPool, self._reactor, self._pool, self._hash)
        else:
            self._hashing = False

    # IPushProducer, for the wrapped writer

    def pauseProducing(self) -> None:
        self._innerPaused = True
        self._update()

    def resumeProducing(self) -> None:
        self._innerPaused = False
        self._update()

    def stopProducing(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()

    def _update(self) -> None:
        want = self._innerPaused or self._behind
        if self._producer is not None and want != self._paused:
            self._paused = want
            if want:
                self._producer.pauseProducing()
            else:
                self._producer.resumeProducing()

    # IBlobWriter

    def finish(self) -> Deferred[BlobInfo]:
        return Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> BlobInfo:
        # Queued behind every hashing batch: the digests are complete then.
        await self._lock.run(deferToThreadPool, self._reactor, self._pool, self._hash)
        for name, want in self._expected.items():
            if self._hashes[name].digest() != want:
                await self.inner.abort()
                raise DigestMismatch(_NAMES.get(name, name))
        return await self.inner.finish()

    def abort(self) -> Deferred[None]:
        return self.inner.abort()


_NAMES = {"md5": "Content-MD5", "sha512": "sha-512 Repr-Digest"}


def verifying(
    writer: IBlobWriter, expected: dict[str, bytes], reactor: Any, pool: ThreadPool
) -> IBlobWriter:
    """C{writer}, wrapped if some C{expected} digest is not its own sha256."""
    extra = {k: v for k, v in expected.items() if k != "sha256"}
    return VerifyingWriter(writer, extra, reactor, pool) if extra else writer
