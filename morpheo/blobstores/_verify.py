# -*- test-case-name: tests.integration.test_objects -*-
"""
Checking a blob against the digest its client stated, before it is
committed, for digests the blob store does not compute itself (it always
computes sha256).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer, IPushProducer, IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._errors import DigestMismatch
from .._interfaces import IBlobWriter
from .._types import BlobInfo
from ._flow import ProducerGate, Share
from ._hasher import Hasher
from ._writer import BlobWriter


@implementer(IBlobWriter, IPushProducer)
class VerifyingWriter:
    """
    Wraps a writer: passes every byte on, hashes it in a thread pool, and
    commits only if the digests match.

    It stands between the request body and the wrapped writer as a producer
    too: the body is paused while the wrapped writer has paused us or the
    hashing is behind, so memory stays bounded whichever is slower (by the
    wrapped writer's C{share} of its budget, when it has one: the hash
    holds the same bytes).
    """

    def __init__(
        self,
        inner: IBlobWriter,
        expected: dict[str, bytes],
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        share: Share | None = None,
    ) -> None:
        self.inner = inner
        self.key = inner.key
        self._expected = expected
        self._gate = ProducerGate()
        self._hasher = Hasher(expected, reactor, pool, self._gate, share=share)

    # IConsumer, for the request body

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)
        self.inner.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        self.inner.unregisterProducer()
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        self._hasher.update(data)

    # IPushProducer, for the wrapped writer

    def pauseProducing(self) -> None:
        self._gate.hold(self.inner)

    def resumeProducing(self) -> None:
        self._gate.letGo(self.inner)

    def stopProducing(self) -> None:
        if self._gate.producer is not None:
            self._gate.producer.stopProducing()

    # IBlobWriter

    def started(self) -> Deferred[str | None]:
        return self.inner.started()

    def finish(self) -> Deferred[BlobInfo]:
        return Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> BlobInfo:
        digests = await self._hasher.digests()
        for name, want in self._expected.items():
            if digests[name] != want:
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
    if not extra:
        return writer
    share = writer.share if isinstance(writer, BlobWriter) else None
    return VerifyingWriter(writer, extra, reactor, pool, share)
