# -*- test-case-name: tests.unit.test_unknown_sizes,tests.integration.test_blobstore_contract -*-
"""
What every blob writer does the same way, whatever the bytes go to: count
them against the announced size (or, for a blob whose size is known only
at its end, against the most the store can take), hold the producer back
while they are buffered (within the writer's share of its store's memory
budget, given back when it ends), refuse to be used after C{finish()} or
C{abort()}, keep the first failure for the next call to report, and abort
once however often asked.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._errors import SizeMismatch, TooLarge
from .._interfaces import IBlobWriter
from .._observer import OneShotObserverList
from .._types import BlobInfo
from ._flow import HIGH_WATER, LOW_WATER, Backlog, ProducerGate, Share

log = Logger()


class Use(Enum):
    """How far the web layer is with a writer."""

    OPEN = "open"
    FINISHED = "finished"  # finish() was called and accepted the size
    ABORTED = "aborted"  # abort() was called (by finish() too, when it fails)


@implementer(IBlobWriter)
class BlobWriter:
    """
    The skeleton of a writer of C{size} bytes under C{key}, or of a blob
    whose size is known only once L{finish} is called (C{size} L{None}): it
    then takes at most C{maximum} bytes (L{None}: any number), and its size
    is what it received.  Bytes written count in C{_buffer} (a L{Backlog}
    on the producer's gate) until the subclass says they are gone.

    With a C{share} of a memory budget, the marks shrink while many
    transfers run (see L{Backlog}); the share is left when the writer
    ends, committed or aborted.

    Subclasses take each write's bytes (C{_accept}), commit once all are in
    (C{_finish}) and throw away what they hold (C{_discard}, called once);
    they report a failure with C{_fail}.
    """

    #: For a blob of unknown size, the most bytes the store takes in one.
    maximum: int | None = None

    def __init__(
        self,
        key: str,
        size: int | None,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
        share: Share | None = None,
    ) -> None:
        if size is not None and size < 0:
            raise ValueError(f"a blob cannot be {size} bytes long")
        self.key = key
        self.size = size
        self.share = share
        self._gate = ProducerGate()
        self._buffer = Backlog(self._gate, high, low, share)
        self._received = 0
        self._failure: Failure | None = None
        self._use = Use.OPEN
        self._aborted: OneShotObserverList[None] | None = None

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._use is not Use.OPEN:
            raise RuntimeError("write after finish() or abort()")
        if self._failure is not None:
            self._failure.raiseException()
        if not data:
            return
        if self.size is None:
            if self.maximum is not None and self._received + len(data) > self.maximum:
                raise TooLarge(self.maximum)
        elif self._received + len(data) > self.size:
            raise SizeMismatch(self.size, self._received + len(data))
        self._received += len(data)
        self._buffer.grew(len(data))
        self._accept(data)

    # IBlobWriter

    def started(self) -> Deferred[str | None]:
        """
        No handle: what this writer leaves is found without one (a
        temporary file by its name) or goes with the process (memory).
        Writers whose store keeps an upload only a handle finds say so.
        """
        return succeed(None)

    def finish(self) -> Deferred[BlobInfo]:
        if self._use is not Use.OPEN:
            raise RuntimeError("finish() after finish() or abort()")
        if self._failure is not None:
            return self._failWith(self._failure)
        if self.size is not None and self._received != self.size:
            return self._failWith(Failure(SizeMismatch(self.size, self._received)))
        self._use = Use.FINISHED
        return self._finish().addErrback(self._failWith).addBoth(self._leave)

    def abort(self) -> Deferred[None]:
        self._use = Use.ABORTED
        self._leave(None)
        if self._aborted is None:
            aborted = self._aborted = OneShotObserverList()

            def over(result: object) -> None:
                # Every caller hears when the discard is over; none sees its errors.
                if isinstance(result, Failure):
                    log.failure("discarding {key} failed", result, key=self.key)
                aborted.fire(None)

            self._discard().addBoth(over)
        return self._aborted.whenFired()

    def _leave(self, result: Any) -> Any:
        if self.share is not None:
            self.share.leave()
        return result

    # For subclasses

    def _fail(self, reason: Failure) -> None:
        """Keep the first failure for the next write or finish to report,
        and let the producer go so that it writes again and hears it."""
        if self._failure is None:
            self._failure = reason
            self._gate.release()

    def _failWith(self, reason: Failure) -> Deferred[Any]:
        return self.abort().addCallback(lambda _: reason)

    def _accept(self, data: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say where bytes go")

    def _finish(self) -> Deferred[BlobInfo]:
        raise NotImplementedError(f"{type(self).__name__} must say how to commit")

    def _discard(self) -> Deferred[None]:
        raise NotImplementedError(f"{type(self).__name__} must say how to discard")


@implementer(IBlobWriter)
class CappedWriter:
    """
    A writer of a blob of unknown size that takes at most C{limit} bytes:
    one more, and C{write} raises L{TooLarge}, so that a body without a
    length is refused as soon as it is too large rather than at its end.
    """

    def __init__(self, inner: IBlobWriter, limit: int) -> None:
        self.inner = inner
        self.key = inner.key
        self._limit = limit
        self._received = 0

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.inner.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._received + len(data) > self._limit:
            raise TooLarge(self._limit)
        self._received += len(data)
        self.inner.write(data)

    def started(self) -> Deferred[str | None]:
        return self.inner.started()

    def finish(self) -> Deferred[BlobInfo]:
        return self.inner.finish()

    def abort(self) -> Deferred[None]:
        return self.inner.abort()
