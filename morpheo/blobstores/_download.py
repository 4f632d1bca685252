# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Downloads from the remote stores: a response body pumped into the web
layer's consumer with flow control, the consumer's pauses stopping the
reading of the socket.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from .._errors import BlobStoreError
from ._bodies import Unpausable
from ._http import asStoreError
from ._producer import BlobProducer


class _Download(BlobProducer, Protocol):
    """
    Copies a response body into a consumer; the consumer's pauses pause the
    response's transport, so the socket stops being read.
    """

    def __init__(self, consumer: IConsumer, expected: int | None, what: str) -> None:
        super().__init__(consumer)
        self._expected = expected
        self._what = what
        self._received = 0

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)
        if self.paused:
            transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._received += len(data)
        self.consumer.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._end(asStoreError(self._what, reason))
        elif self._expected is None or self._received == self._expected:
            self._end()
        else:
            short = f"{self._what} ended after {self._received} of {self._expected} bytes"
            self._end(Failure(BlobStoreError(short)))

    def _go(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _halt(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _giveUp(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def streamResponse(
    response: IResponse, consumer: IConsumer, what: str, want: int | None = None
) -> Deferred[None]:
    """
    Stream C{response}'s body into C{consumer} with flow control; fires when
    all of it (as many bytes as the response announced) has been written.
    A range request (C{want} bytes) that the server would answer short fails
    before any byte is written.
    """
    length = response.length
    expected = None if length is UNKNOWN_LENGTH else int(length)
    if want is not None and expected is not None and expected != want:
        response.deliverBody(Protocol())  # drop the connection's body
        raise BlobStoreError(f"{what}: asked for {want} bytes, the store has {expected}")
    protocol = _Download(consumer, expected, what)
    done = protocol.beginProducing()
    response.deliverBody(protocol)
    return done


class Dropped(Protocol):
    """Takes a response body nobody wants by dropping its connection."""

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)
        transport.stopProducing()  # type: ignore[attr-defined]


def produceNothing(consumer: IConsumer) -> None:
    """A zero-byte read: a producer registers with C{consumer} and is done."""
    consumer.registerProducer(Unpausable(), True)
    consumer.unregisterProducer()
