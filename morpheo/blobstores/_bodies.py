# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Request bodies sent to the remote stores: one fed piecewise by a writer as
the transport allows, and one already in memory.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Unpausable:
    """A producer with nothing to pause: what it has goes out at once."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class BytesBody(Unpausable):
    """A small request body already in memory (XML, JSON), written at once."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._data:
            consumer.write(self._data)
        return succeed(None)


@implementer(IBodyProducer)
class StreamBody:
    """
    The body of one outgoing request, C{length} bytes long, fed by a
    writer.  The transport pauses and resumes it; the writer writes into it
    only while it is L{writable}, and hears from C{onReady} when it may
    again.
    """

    def __init__(self, length: int, onReady: Callable[[], None]) -> None:
        self.length = length
        self.remaining = length
        self.paused = False
        self.stopped = False
        self.consumer: IConsumer | None = None
        self._onReady = onReady
        self._done: Deferred[None] | None = None

    @property
    def writable(self) -> bool:
        return self.consumer is not None and not (self.paused or self.stopped)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        self._done = Deferred()
        if self.remaining == 0:
            self._done.callback(None)
        else:
            self._onReady()
        return self._done

    def write(self, data: bytes) -> None:
        assert self.consumer is not None and self._done is not None
        self.remaining -= len(data)
        self.consumer.write(data)
        if self.remaining == 0 and not self.stopped:
            self._done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._onReady()

    def stopProducing(self) -> None:
        # The request failed or was cancelled; the writer learns it from
        # the request's Deferred.  Ours must not fire any more.
        self.stopped = True
