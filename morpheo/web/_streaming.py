# -*- test-case-name: tests.unit.test_streaming_layer,tests.integration.test_streaming -*-
"""
Streaming request bodies for twisted.web.

Stock twisted.web reads a whole request body into C{request.content} before
it looks at the URL.  Here the request is dispatched as soon as its headers
have arrived, and the body is handed to the handler as a stream
(L{RequestBody.deliverBody}, shaped like the client's
C{IResponse.deliverBody}): bytes are pushed to a protocol as they come, and
pausing that protocol's transport stops the socket from being read.

Serve with L{StreamingSite}.  A resource that needs the body checks
C{IStreamingRequest.providedBy(request)} and refuses clearly otherwise.

A request knows its client is gone before anything is told so (the
transport stops the response's producer before it reports the loss): from
then on its answer goes nowhere, and a failure that the loss caused (a
download's producer stopped, a body cut) is neither logged as an error nor
answered with a 500.  The request ends when the loss reaches it
(C{notifyFinish} fails): the access log says aborted.

The private parts of L{twisted.web.http.HTTPChannel} used here are checked by
C{tests/test_streaming.py} so that a Twisted upgrade that moves them fails
loudly.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProducer, IProtocol, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import Attribute, Interface, implementer

#: After an early answer, how much of the rest of a body is read and thrown
#: away to keep the connection; beyond it the connection is closed.
DISCARD_LIMIT = 1024 * 1024

#: How much one read of the socket may take.
READ_SIZE = 256 * 1024

#: When a connection closes with a body still arriving (an early answer to a
#: large upload), how long the rest is read and dropped after the answer, so
#: that the client reads the answer rather than a reset.
LINGER_SECONDS = 2.0


class BodyAborted(Exception):
    """The request body stopped before its end: the client went away."""


#: What a handler fails with when its client goes away: no error of the
#: server's.
CLIENT_GONE = (CancelledError, BodyAborted, ConnectionDone, ConnectionLost)


class IStreamingRequest(Interface):
    """A request whose body is read as a stream, not from C{content}."""

    body = Attribute("The L{RequestBody}.")


class _NoContent:
    """
    Stands where C{request.content} would be: code written for stock
    twisted.web must fail loudly here rather than see an empty body.
    """

    def _refuse(self, *args: object) -> bytes:
        raise RuntimeError(
            "this request's body is streamed: read it with request.body.deliverBody()"
        )

    read = readline = seek = tell = _refuse

    def close(self) -> None:
        pass


@implementer(IPushProducer)
class RequestBody:
    """
    One request's body, as a stream.

    Until L{deliverBody} is called the socket is not read (so a client that
    sent C{Expect: 100-continue} is not told to continue, and a rejection
    decided from the headers goes out with the body unread).
    """

    _log = Logger()

    def __init__(self, request: StreamingRequest, length: int | None) -> None:
        self._request = request
        #: The announced length, or L{None} for a chunked body.
        self.length = length
        self.received = 0
        self.complete = False
        self._protocol: IProtocol | None = None
        self._early: list[bytes] = []
        self._outcome: Failure | None = None
        self._stopped = False

    def deliverBody(self, protocol: IProtocol) -> None:
        """
        Start reading: C{protocol.makeConnection(self)}, then its
        C{dataReceived} for every chunk, then C{connectionLost} with
        L{ResponseDone} at the end or another failure if the body was cut
        short.  Pause, resume or stop the stream through the transport.
        """
        if self._protocol is not None:
            raise RuntimeError("the body is already being delivered")
        self._protocol = protocol
        protocol.makeConnection(self)  # type: ignore[arg-type]
        early, self._early = self._early, []
        for data in early:
            if self._stopped:
                break
            protocol.dataReceived(data)
        if self._outcome is not None:
            self._deliverEnd()
            return
        channel = self._request._channel
        if channel is not None:
            self._request.sendContinue()
            channel.resumeReading("start")

    # Called by the request.

    def _dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self._stopped:
            return
        if self._protocol is None:
            self._early.append(data)
        else:
            self._protocol.dataReceived(data)

    def _ended(self, reason: Failure) -> None:
        if self._outcome is not None:
            return
        self.complete = reason.check(ResponseDone) is not None
        self._outcome = reason
        if self._protocol is not None:
            self._deliverEnd()

    def _deliverEnd(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and not self._stopped:
            self._stopped = True
            assert self._outcome is not None
            protocol.connectionLost(self._outcome)

    # IPushProducer, for the protocol.

    def pauseProducing(self) -> None:
        channel = self._request._channel
        if channel is not None and not self.complete:
            channel.pauseReading("consumer")

    def resumeProducing(self) -> None:
        channel = self._request._channel
        if channel is not None:
            channel.resumeReading("consumer")

    def stopProducing(self) -> None:
        """
        The protocol wants no more: the rest of the body is discarded (or the
        connection closed, see L{StreamingRequest.discardBody}).
        """
        self._stopped = True
        self._protocol = None
        self._early = []
        self._request.discardBody()


@implementer(IStreamingRequest)
class StreamingRequest(server.Request):
    """
    A request routed as soon as its headers have arrived.
    """

    body: RequestBody
    _log = Logger()
    _bodyDone = True
    #: The connection is lost or being lost: nobody reads the answer.
    _gone = False
    _dispatched = False
    _doneEarly = False
    _discarding = False
    _continueSent = False
    _discardLimit = 0

    def gotLength(self, length: int | None) -> None:
        # No spool file: the body goes to whoever asks for it.
        self.content = _NoContent()
        self.body = RequestBody(self, length)
        self._bodyDone = length == 0
        #: Unlike C{channel}, kept after the response until the body ends.
        self._channel: StreamingChannel | None = self.channel  # type: ignore[assignment]

    def dispatch(self, command: bytes, path: bytes, version: bytes) -> None:
        """Route the request now, before its body; see L{RequestBody}."""
        self._dispatched = True
        self.method, self.uri = command, path
        self.clientproto = version
        self.args = {}
        self.path, _, query = self.uri.partition(b"?")
        if query:
            self.args = http.parse_qs(query, 1)
        self.process()

    def expectsContinue(self) -> bool:
        expect = self.requestHeaders.getRawHeaders(b"Expect")
        return (
            bool(expect)
            and expect[0].lower() == b"100-continue"  # type: ignore[index]
            and self.clientproto == b"HTTP/1.1"
        )

    def sendContinue(self) -> None:
        """Tell a client that waits for it to send the body, once, and only
        while no response has started."""
        if (
            not self._continueSent
            and not self.startedWriting
            and not self._bodyDone
            and self.expectsContinue()
            and self._channel is not None
        ):
            self._continueSent = True
            self._channel._send100Continue()

    def handleContentChunk(self, data: bytes) -> None:
        self.body._dataReceived(data)
        if self._discarding and self.body.received > self._discardLimit:
            self._giveUpBody()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The body ended (stock twisted.web calls this to route)."""
        self._bodyDone = True
        if not self._dispatched:
            # A request without a body: route it now, as stock twisted.web.
            self.dispatch(command, path, version)
        self.body._ended(Failure(ResponseDone("the request body is complete")))
        if self._doneEarly and self._channel is not None:
            self._doneEarly = False
            self._channel.requestDone(self)

    def discardBody(self) -> None:
        """
        Nobody will read the rest of the body: read and drop up to
        L{DISCARD_LIMIT} so the connection can carry the next request, or
        close it after the response if the rest is known to be larger or
        the client still waits for C{100 Continue}.
        """
        if self._bodyDone or self._discarding:
            return
        self._discarding = True
        self.body._stopped = True
        self.body._early = []
        self._discardLimit = self.body.received + DISCARD_LIMIT
        length = self.body.length
        tooLong = length is not None and length > self._discardLimit
        if tooLong or (self.expectsContinue() and not self._continueSent):
            self._closeAfterResponse()
        if self._channel is not None:
            self._channel.resumeReading("start")
            self._channel.resumeReading("consumer")

    def _closeAfterResponse(self) -> None:
        if self._channel is not None:
            self._channel.persistent = False
        if not self.startedWriting:
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])

    def _giveUpBody(self) -> None:
        self._closeAfterResponse()
        if self.finished and self._channel is not None:
            self._channel.loseConnection()

    def write(self, data: bytes) -> None:
        if self._gone:
            return
        if not self.startedWriting and not self._bodyDone:
            # Answering before the body is read: say whether the connection
            # survives while the headers can still carry it.
            self.discardBody()
        super().write(data)

    def finish(self) -> None:
        if self._gone:
            # An answer to nobody: the request ends, aborted, when the loss
            # of its connection reaches it; not as a response sent.
            return
        super().finish()

    def processingFailed(self, reason: Failure) -> Failure:
        """
        Stock twisted.web logs the failure as critical and answers 500;
        with the client gone there is nobody to answer, and a failure the
        loss caused is no error at all.
        """
        if not self._gone:
            return super().processingFailed(reason)  # type: ignore[no-any-return]
        if not reason.check(*CLIENT_GONE):
            self._log.failure(
                "{method} {uri} failed after its client went away",
                reason,
                level=LogLevel.error,
                method=self.method.decode("latin-1"),
                uri=self.uri.decode("latin-1")[:2048],
            )
        return reason

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._gone:
            # As a transport whose connection is gone: stopped at once.
            producer.stopProducing()
            return
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.channel is None:
            # Stock code would fail on the channel the loss took away.
            self.producer = None
            return
        super().unregisterProducer()

    def clientGone(self) -> None:
        """Nobody will read the answer: called as the connection goes."""
        self._gone = True

    def connectionLost(self, reason: Failure) -> None:
        # Before the body's reader hears of it: what it does about it
        # (fail, answer) must find the request already gone.
        self._gone = True
        if not self._bodyDone:
            self._bodyDone = True
            self.body._ended(
                Failure(BodyAborted(f"the client went away: {reason.getErrorMessage()}"))
            )
        self._channel = None
        super().connectionLost(reason)

    def _finishedBeforeBody(self) -> bool:
        """Called by the channel's C{requestDone}."""
        if self._bodyDone or self._channel is None or not self._channel.persistent:
            return False
        self._doneEarly = True
        return True


class StreamingChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that dispatches each request once its headers are
    in, and stops reading the socket while any reason to pause remains:
    the body's consumer is full, the handler has not started reading, or
    the response cannot be sent.
    """

    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self._readPauses: set[str] = set()
        self._pausedTimeOut: Any = None
        self._current: StreamingRequest | None = None
        self._lingering: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Read bodies in larger gulps than the default 64 KiB: fewer trips
        # through the parser and the writer per megabyte.
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE  # type: ignore[union-attr]

    def pauseReading(self, reason: str) -> None:
        if not self._readPauses:
            self._networkProducer.pauseProducing()
            # The idle timeout measures the client's silence; while we are
            # the one not reading, it must not run.
            self._pausedTimeOut = self.setTimeout(None)
        self._readPauses.add(reason)

    def resumeReading(self, reason: str) -> None:
        if reason not in self._readPauses:
            return
        self._readPauses.discard(reason)
        if not self._readPauses:
            if self._handlingRequest:
                # The body ended while paused: stock requestDone restores
                # the timeout it saved.
                self._savedTimeOut = self._savedTimeOut or self._pausedTimeOut
            else:
                self.setTimeout(self._pausedTimeOut)
            self._pausedTimeOut = None
            self._networkProducer.resumeProducing()

    def allHeadersReceived(self) -> None:
        req = self.requests[-1]
        req.parseCookies()
        self.persistent = self.checkPersistence(req, self._version)
        req.gotLength(self.length)
        self._current = req
        if self.length != 0:
            # Route now; the handler starts the body when it wants it.
            self.pauseReading("start")
            req.dispatch(self._command, self._path, self._version)

    def allContentReceived(self) -> None:
        if not self.requests:
            # The response went out and the connection is closing: the rest
            # of that body is not wanted.
            return
        super().allContentReceived()

    def requestDone(self, request: StreamingRequest) -> None:
        if request._finishedBeforeBody():
            # The body is still coming; finish the request when it has.
            self.resumeReading("start")
            self.resumeReading("consumer")
            return
        self._readPauses.discard("start")
        self._readPauses.discard("consumer")
        if not self._readPauses:
            self._pausedTimeOut = None
        super().requestDone(request)

    def loseConnection(self) -> None:
        """
        Close, lingering if a body is still arriving: closing a socket with
        unread bytes sends a reset, which can destroy the answer before the
        client reads it.  So send the answer and a FIN, read and drop what
        still comes for up to L{LINGER_SECONDS}, then close (as nginx's
        C{lingering_close}).
        """
        request = self._current
        halfClose = getattr(self.transport, "loseWriteConnection", None)
        if self._lingering is not None or halfClose is None or request is None or request._bodyDone:
            super().loseConnection()
            return
        # As stock loseConnection: the response's producer goes first.
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        try:
            halfClose()
        except NotImplementedError:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.setTimeout(None)
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self._lingering = self.callLater(LINGER_SECONDS, self.transport.loseConnection)  # type: ignore[union-attr]
        self._readPauses.clear()
        self._networkProducer.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)

    def stopProducing(self) -> None:
        """
        The transport's connection is going (it says so before it calls
        C{connectionLost}): the requests learn it before their producers
        are stopped, so that what the stop makes fail finds them gone.
        """
        for request in self.requests:
            request.clientGone()
        super().stopProducing()

    # The write side: the transport pauses us when its buffer is full.

    def pauseProducing(self) -> None:
        self._waitingForTransport = True
        if self._requestProducer is not None:
            self._requestProducer.pauseProducing()
        if not self._handlingRequest:
            self.pauseReading("transport")

    def resumeProducing(self) -> None:
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        if not self._handlingRequest:
            self.resumeReading("transport")


class StreamingSite(server.Site):
    """
    A L{server.Site} whose requests stream their bodies (HTTP/1.1 only).
    """

    protocol = StreamingChannel  # type: ignore[assignment]
    requestFactory = StreamingRequest

    def __init__(self, resource: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


__all__ = [
    "CLIENT_GONE",
    "BodyAborted",
    "IStreamingRequest",
    "PotentialDataLoss",
    "RequestBody",
    "StreamingChannel",
    "StreamingRequest",
    "StreamingSite",
]
