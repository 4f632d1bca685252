# -*- test-case-name: tests.unit.test_resumable_stores -*-
"""
What the local and memory stores' appenders (L{IAppender}) share: count the
bytes against the blob's end, hold the producer back while they are
buffered (within the appender's share of its store's memory budget), keep
the first failure for the next write to report, and take one close only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .._errors import SizeMismatch
from .._interfaces import IAppender
from .._types import Appended
from ._flow import Backlog, ProducerGate, Share


@implementer(IAppender)
class Appender:
    """
    The skeleton of an appender to a write that holds C{offset} bytes, and
    whose blob is C{end} bytes long if that is known.  Subclasses take each
    write's bytes (C{_accept}) and say how a close keeps or drops them
    (C{_close}); they report a failure with C{_fail}.
    """

    def __init__(
        self,
        state: str,
        offset: int,
        end: int | None,
        high: int,
        low: int,
        share: Share,
    ) -> None:
        self.state = state
        self.offset = offset
        self.end = end
        self._share = share
        self._gate = ProducerGate()
        self._buffer = Backlog(self._gate, high, low, share)
        self._received = 0
        self._failure: Failure | None = None
        self._closed = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write after close()")
        if self._failure is not None:
            self._failure.raiseException()
        if not data:
            return
        total = self.offset + self._received + len(data)
        if self.end is not None and total > self.end:
            raise SizeMismatch(self.end, total)
        self._received += len(data)
        self._buffer.grew(len(data))
        self._accept(data)

    def close(self, keep: bool = True) -> Deferred[Appended]:
        if self._closed:
            raise RuntimeError("close() called twice")
        self._closed = True

        def leave(result: Any) -> Any:
            self._share.leave()
            return result

        return self._close(keep).addBoth(leave)

    def _fail(self, reason: Failure) -> None:
        """Keep the first failure, and let the producer go so that its next
        write hears it."""
        if self._failure is None:
            self._failure = reason
            self._gate.release()

    def _accept(self, data: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say where bytes go")

    def _close(self, keep: bool) -> Deferred[Appended]:
        raise NotImplementedError(f"{type(self).__name__} must say how to close")
