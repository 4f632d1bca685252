# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
The HTTP client of the remote stores: persistent connections that read in
large blocks, small response bodies read with a cap and an idle timeout,
and transport failures told as a L{BlobStoreError} in one sentence.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTP11ClientProtocol,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgent, IResponse

from .._errors import BlobStoreError, SizeMismatch

#: How much a connection to the store reads at once.  Twisted's 64 KiB
#: makes a download cost the reactor thread almost twice the CPU time, in
#: system calls and callbacks; what is read is written on at once, so this
#: bounds the memory a download holds as well.
READ_SIZE = 1024 * 1024

#: How much of an error or XML response body is read at most.
SMALL_BODY = 1024 * 1024

#: Seconds a small body may go without a byte before it is given up.
IDLE_TIMEOUT = 60.0


def describeFailure(reason: Failure) -> str:
    """A short sentence for a network failure, without a traceback."""
    reasons = getattr(reason.value, "reasons", None)
    if reasons:
        inner = [f.getErrorMessage() or f.type.__name__ for f in reasons]
        return "the connection failed: " + "; ".join(inner)
    if reason.check(ConnectError):
        return f"cannot connect: {reason.getErrorMessage()}"
    return reason.getErrorMessage() or reason.type.__name__  # type: ignore[union-attr]


def asStoreError(what: str, reason: Failure) -> Failure:
    """Turn any failure of C{what} into a L{BlobStoreError} naming it."""
    if reason.check(BlobStoreError, CancelledError, SizeMismatch):
        return reason
    return Failure(BlobStoreError(f"{what} failed: {describeFailure(reason)}"))


class _StoreProtocol(HTTP11ClientProtocol):
    def makeConnection(self, transport: ITransport) -> None:
        # The TCP transport is this one, or the one under the TLS layer.
        layer: Any = transport
        for _ in range(3):
            if layer is None:
                break
            if hasattr(layer, "bufferSize"):
                layer.bufferSize = READ_SIZE
            layer = getattr(layer, "transport", None)
        super().makeConnection(transport)


class _QuietFactory(_HTTP11ClientFactory):
    """
    Connections to the store that read in large blocks, without a log line
    for each ("Starting factory ...").
    """

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        return _StoreProtocol(self._quiescentCallback)


def makeAgent(reactor: Any, persistent: int = 8, connectTimeout: float = 30) -> IAgent:
    """
    The HTTP client of a remote store: persistent connections (up to
    C{persistent} idle ones kept) that read L{READ_SIZE} at a time, quiet
    in the log.
    """
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = persistent
    pool._factory = _QuietFactory
    return Agent(reactor, connectTimeout=connectTimeout, pool=pool)


class _SmallBody(Protocol):
    """Keeps the first C{limit} bytes of a body; stops reading past them,
    or when nothing came for C{timeout} seconds."""

    def __init__(self, clock: IReactorTime, limit: int, timeout: float) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._parts: list[bytes] = []
        self._left = limit
        self._clock = clock
        self._timeout = timeout
        self._idle: IDelayedCall | None = clock.callLater(timeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.reset(self._timeout)
        if self._left <= 0:
            return
        self._parts.append(data[: self._left])
        self._left -= len(data)
        if self._left <= 0 and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._idle is None:
            return  # timed out: told already
        self._idle.cancel()
        self._idle = None
        if reason.check(ResponseDone, PotentialDataLoss) or self._left <= 0:
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)

    def _timedOut(self) -> None:
        self._idle = None
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        self.done.errback(
            BlobStoreError(f"the store sent nothing for {self._timeout:g} s in a response")
        )


def readSmall(
    response: IResponse,
    clock: IReactorTime,
    limit: int = SMALL_BODY,
    timeout: float = IDLE_TIMEOUT,
) -> Deferred[bytes]:
    """
    Read a response body expected to be small (an error, some XML or JSON),
    keeping at most C{limit} bytes, so a misbehaving server cannot fill the
    memory, and giving up after C{timeout} seconds without a byte, so a
    stalled one cannot hold the request for ever.
    """
    protocol = _SmallBody(clock, limit, timeout)
    response.deliverBody(protocol)
    return protocol.done
