# -*- test-case-name: tests.unit.test_sendfile,tests.integration.test_sendfile -*-
"""
Downloads of local blobs with C{os.sendfile}: on a plain TCP (or UNIX)
connection the kernel copies the file into the socket, and the bytes never
pass through the process.  TLS, the in-memory transports of the tests and a
platform without C{sendfile} keep the threaded producer (the blob store's
C{produce}).

The response's head (and each part's head of a C{multipart/byteranges}) is
written through the transport as usual; the file's bytes are sent only
once the transport has nothing of its own left to send, so the two never
interleave.  C{sendfile} runs in the blob store's pool (a file not in the
page cache is read from disk there, not on the reactor), at most L{STEP}
bytes a trip, until the socket is full; the reactor then waits until it is
writable again, watching a duplicate of the socket's descriptor (the
transport keeps its own registration for reading).  A client that reads
nothing for the idle timeout is cut, as on the other path.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
    ISSLTransport,
    IWriteDescriptor,
)
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from .._errors import BlobStoreError
from .._interfaces import IBlobFile

#: Below this many bytes, one read in the pool costs as much as a
#: C{sendfile}, and works on every transport.
SENDFILE_MIN = 256 * 1024

#: The most one trip to the pool sends (it returns sooner when the socket
#: is full).
STEP = 16 * 1024 * 1024

#: The first and the largest C{sendfile} call of a trip.
FIRST_CALL = 64 * 1024
LARGEST_CALL = 4 * 1024 * 1024

_sendfile = getattr(os, "sendfile", None)


def sendfileTransport(request: IRequest) -> tcp.Connection | None:
    """The request's transport if the file can be sent into its socket
    directly: a plain TCP or UNIX connection of a reactor with descriptors."""
    if _sendfile is None:
        return None
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if (
        isinstance(transport, tcp.Connection)
        and not ISSLTransport.providedBy(transport)
        and IReactorFDSet.providedBy(getattr(transport, "reactor", None))
    ):
        return transport
    return None


def _flushed(transport: tcp.Connection) -> bool:
    """Whether the transport has sent everything written to it."""
    return len(transport.dataBuffer) == transport.offset and not transport._tempDataLen


def _sendInThread(
    socketFd: int, fileFd: int, offset: int, count: int, progress: list[int]
) -> tuple[int, bool]:
    """
    Send up to C{count} bytes of the file from C{offset}; runs in the pool,
    counting in C{progress} (its one item) what is sent, or being sent, as
    it goes.
    Returns how many were sent, and whether the socket is full.
    """
    assert _sendfile is not None
    sent = 0
    # Small calls first, then larger: the count is soon true (a client gone
    # early is logged with what it was sent), and the large ones are cheap.
    call = FIRST_CALL
    while sent < count:
        size = min(count - sent, call)
        # A call in progress counts, as bytes written to a transport do:
        # the client may have them before it returns.
        progress[0] = sent + size
        try:
            n = _sendfile(socketFd, fileFd, offset + sent, size)
            call = min(2 * call, LARGEST_CALL)
        except BlockingIOError:
            progress[0] = sent
            return sent, True
        except InterruptedError:
            continue
        if n == 0:
            raise BlobStoreError("the blob's file ended before its length")
        sent += n
        progress[0] = sent
    return sent, False


@implementer(IPushProducer, IWriteDescriptor)
class FileSender:
    """
    Sends ranges of C{blob} into C{transport}'s socket for C{request}, one
    at a time (L{send}); L{close} when done.  Registered as the request's
    producer while it sends: the connection's loss stops it.

    @param idleTimeout: how long the socket may stay full (the client
        reading nothing) before the connection is cut; L{None} for ever.
    @param stalled: what cuts it (the channel's own way, which logs why).
    """

    def __init__(
        self,
        request: IRequest,
        transport: tcp.Connection,
        blob: IBlobFile,
        idleTimeout: float | None,
        stalled: Any,
    ) -> None:
        self._request = request
        self._transport = transport
        self._reactor: Any = transport.reactor
        self._blob = blob
        self._idleTimeout = idleTimeout
        self._stalled = stalled
        #: A duplicate of the socket's descriptor, watched for writability.
        self._fd: int | None = os.dup(transport.fileno())
        self._watching = False
        self._paused = False
        self._stall: IDelayedCall | None = None
        #: The trip to the pool in flight, if any.
        self._inFlight: Deferred[tuple[int, bool]] | None = None
        self._offset = 0
        self._remaining = 0
        #: What the trip in flight has sent so far (written by its thread),
        #: and how much of it the request has been told of.
        self._progress = [0]
        self._counted = 0
        self._done: Deferred[None] | None = None
        self._stopped: Failure | None = None
        #: No more trips: the connection is being cut, or this is over.
        self._halted = False

    def send(self, offset: int, length: int) -> Deferred[None]:
        """Send C{length} bytes from C{offset}, after what the transport
        holds; fires when they are all in the socket."""
        assert self._done is None, "one range at a time"
        self._offset, self._remaining = offset, length
        done = self._done = Deferred(lambda d: self._stop(Failure(CancelledError())))
        if self._stopped is not None:
            self._finish(self._stopped)
            return done
        self._request.registerProducer(self, True)  # type: ignore[attr-defined]
        self._step()
        return done

    def close(self) -> Deferred[None]:
        """Stop, give the socket's duplicate back and close the file; once,
        at the end, after the trip to the pool in flight if any."""
        self._stop(Failure(CancelledError("the download is over")))
        return self._afterTrip().addCallback(lambda _: self._blob.close())

    # The loop

    def _step(self) -> None:
        done = self._done
        if (
            done is None
            or done.called
            or self._inFlight is not None
            or self._paused
            or self._halted
        ):
            return
        if self._remaining == 0:
            self._finish()
            return
        if not _flushed(self._transport):
            # The transport sends its own bytes first (it is writing them).
            self._watch()
            return
        assert self._fd is not None
        self._progress, self._counted = [0], 0
        self._inFlight = self._blob.inThread(
            _sendInThread,
            self._fd,
            self._blob.fileno(),
            self._offset,
            min(self._remaining, STEP),
            self._progress,
        )
        self._inFlight.addCallbacks(self._sent, self._failed)

    def _sent(self, result: tuple[int, bool]) -> None:
        self._inFlight = None
        sent, full = result
        self._offset += sent
        self._remaining -= sent
        self._credit(sent)
        if self._stopped is not None:
            self._finish(self._stopped)
            return
        if self._halted:
            # The connection is being cut: its loss stops this.
            return
        if sent:
            self._calm()
        if full:
            self._watch()
            if self._stall is None and self._idleTimeout:
                clock: IReactorTime = self._reactor
                self._stall = clock.callLater(self._idleTimeout, self._cut)
        else:
            self._step()

    def _credit(self, sent: int) -> None:
        """Count what the trip has sent (C{sent} of it) as the request's."""
        self._request.sentLength += sent - self._counted  # type: ignore[attr-defined]
        self._counted = sent

    def _failed(self, reason: Failure) -> None:
        self._credit(self._progress[0])
        self._inFlight = None
        if self._stopped is not None:
            self._finish(self._stopped)
        elif reason.check(BlobStoreError):
            self._finish(reason)
        elif not self._halted:
            # The socket failed: the client is gone.
            self._hangUp()

    def _cut(self) -> None:
        """The client read nothing for the idle timeout: the channel cuts
        the connection, once no duplicate holds the socket (only then does
        an abort reset it)."""
        self._stall = None
        self._halt()
        self._afterTrip().addCallback(lambda _: self._stalled())

    def _hangUp(self) -> None:
        """The socket failed: abort the connection, whose loss (through the
        channel, with the request known gone) then stops this."""
        self._halt()
        self._afterTrip().addCallback(lambda _: self._transport.abortConnection())

    def _halt(self) -> None:
        """No more trips; the duplicate is closed after the one in flight."""
        self._halted = True
        self._unwatch()
        self._calm()
        self._afterTrip().addCallback(lambda _: self._closeDuplicate())

    def _stop(self, reason: Failure) -> None:
        """Stop for good, failing the range being sent with C{reason}."""
        if self._stopped is None:
            self._stopped = reason
        self._halt()
        if self._inFlight is None:
            self._finish(self._stopped)

    def _afterTrip(self) -> Deferred[None]:
        """Fires once no trip to the pool is in flight."""
        pending = self._inFlight
        if pending is None:
            return succeed(None)
        after: Deferred[None] = Deferred()

        def settled(result: object) -> object:
            after.callback(None)
            return result

        pending.addBoth(settled)
        return after

    def _finish(self, reason: Failure | None = None) -> None:
        self._unwatch()
        self._calm()
        done, self._done = self._done, None
        if done is None or done.called:
            return
        if self._request.producer is self:  # type: ignore[attr-defined]
            self._request.unregisterProducer()
        if reason is None:
            done.callback(None)
        else:
            done.errback(reason)

    def _calm(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None

    def _watch(self) -> None:
        if not self._watching and self._fd is not None:
            self._watching = True
            self._reactor.addWriter(self)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeWriter(self)

    def _closeDuplicate(self) -> None:
        self._unwatch()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # IWriteDescriptor: the duplicate is writable (or failed).

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def doWrite(self) -> None:
        self._unwatch()
        self._step()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor dropped the descriptor (a hang-up or an error on it).
        self._watching = False
        self._hangUp()

    def logPrefix(self) -> str:
        return "FileSender"

    # IPushProducer: the channel's word.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._step()

    def stopProducing(self) -> None:
        """The connection is going: stop for good.  What the trip in flight
        has sent so far counts now, before the request is logged."""
        if self._inFlight is not None:
            self._credit(self._progress[0])
        self._stop(Failure(CancelledError("the client went away")))


__all__ = ["SENDFILE_MIN", "FileSender", "sendfileTransport"]
