# -*- test-case-name: tests.unit.test_streaming_layer,tests.unit.test_parser,tests.unit.test_slow_clients,tests.integration.test_streaming,tests.integration.test_hostile_clients -*-  # noqa: E501
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

The channel also answers, as JSON errors, what twisted.web's parser would
drop or answer with an empty 400: a malformed request line or header, a
header block too large (431), a request line too long (414), a body whose
framing is ambiguous (RFC 9112 section 6.3) or malformed.  And it holds
slow clients to deadlines: the header block within C{headerTimeout}
seconds, a body at C{minBodyRate} bytes a second or more (408), a response
read at all within the idle timeout.

The private parts of L{twisted.web.http.HTTPChannel} used here are checked by
C{tests/unit/test_streaming_layer.py} so that a Twisted upgrade that moves
them fails loudly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from errno import ENOBUFS, EWOULDBLOCK
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.util import untilConcludes
from twisted.web import http, server
from twisted.web._newclient import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import Attribute, Interface, implementer

from .._metrics import Metrics

#: After an early answer, how much of the rest of a body is read and thrown
#: away to keep the connection; beyond it the connection is closed.
DISCARD_LIMIT = 1024 * 1024

#: How much one read of the socket may take.
READ_SIZE = 256 * 1024

#: The most one send to a client's plain TCP socket takes.  Twisted's
#: transports send 128 KiB a call (a limit kept for Windows' sake): a
#: download relayed from S3 or GCS in 1 MiB blocks then costs eight system
#: calls and trips through the reactor a block.  What a transport copies
#: does not change: it joins its buffers only once less than its own
#: C{SEND_LIMIT} is left to send.
SEND_SIZE = 4 * 1024 * 1024


def sendLarger(transport: object, size: int = SEND_SIZE) -> bool:
    """
    Let a plain TCP transport (not TLS) send up to C{size} bytes a call
    to its socket, as much as the kernel takes; whether it now does.
    """
    if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
        return False
    send = transport.socket.send

    def writeSomeData(data: bytes) -> int | ConnectionLost:
        # tcp.Connection.writeSomeData, with a larger limit.
        try:
            sent: int = untilConcludes(send, memoryview(data)[:size])
        except OSError as e:
            if e.args[0] in (EWOULDBLOCK, ENOBUFS):
                return 0
            return main.CONNECTION_LOST
        return sent

    transport.writeSomeData = writeSomeData  # type: ignore[method-assign]
    return True


#: When a connection closes with a body still arriving (an early answer to a
#: large upload), how long the rest is read and dropped after the answer, so
#: that the client reads the answer rather than a reset.
LINGER_SECONDS = 2.0

#: How long the header block of a request may take to arrive, in seconds.
HEADER_TIMEOUT = 30.0

#: The slowest a body may arrive, in bytes a second, averaged over
#: L{RATE_WINDOW} seconds of reading; 0 for no minimum.
MIN_BODY_RATE = 1024

#: The window L{MIN_BODY_RATE} is measured over, in seconds.
RATE_WINDOW = 60.0

#: The largest Content-Length taken: a PostgreSQL bigint's.
MAX_CONTENT_LENGTH = 2**63 - 1

#: Reason phrases twisted.web does not know (RFC 6585), or names otherwise
#: than RFC 9110.
_REASONS = {
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}

#: A token (RFC 9110 section 5.6.2): what a method or a header name is made of.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class BodyAborted(Exception):
    """The request body stopped before its end: the client went away."""


#: What a handler fails with when its client goes away: no error of the
#: server's.
CLIENT_GONE = (CancelledError, BodyAborted, ConnectionDone, ConnectionLost)


class BodyRefused(Exception):
    """
    The channel read no more of a request body: its framing is malformed,
    or it came too slowly.  The handler reading it fails with this, and
    answers C{code} with C{message}; the connection closes after.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def errorBody(message: str) -> bytes:
    """The JSON of an error answer: C{{"error": message}}."""
    return json.dumps({"error": message}).encode("utf-8") + b"\n"


def _requestLineProblem(line: bytes) -> str:
    """What is wrong with a request line twisted.web's parser refused."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return (
            "the request line must be METHOD TARGET HTTP/1.1, three parts separated by"
            " single spaces"
        )
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return f"the method {method[:40].decode('latin-1')!r} is not a token of letters and digits"
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return f"this service speaks HTTP/1.1, not {version[:40].decode('latin-1')!r}"
    return (
        "the request target must be printable ASCII without spaces: percent-encode"
        " other bytes (as UTF-8)"
    )


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
            metrics = self._request.metrics
            if metrics is not None and "consumer" not in channel._readPauses:
                metrics.pauses["service"].inc()
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
    #: The channel cut the body (L{refuseBody}): what still comes is dropped.
    _cut = False
    #: Where the bytes of the body and of the answer, and the pauses, are
    #: counted (set by the resource that counts the request; see
    #: L{morpheo.web._metered}).
    metrics: Metrics | None = None

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
        if self._cut:
            return
        metrics = self.metrics
        if metrics is not None:
            metrics.bytesReceived.inc(len(data))
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

    def refuseBody(self, code: int, message: str) -> None:
        """
        Read no more of the body: its reader fails with L{BodyRefused}
        (so that the handler answers C{code}, unless it has answered
        already), the socket is not read until the answer is out, and the
        connection closes after it.
        """
        channel = self._channel
        if self._bodyDone or self._cut or channel is None:
            return
        self._cut = True
        self._closeAfterResponse()
        self.body._ended(Failure(BodyRefused(code, message)))
        if self.finished:
            channel.loseConnection()
        else:
            channel.pauseReading("cut")

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
        metrics = self.metrics
        if metrics is not None and data and self.method != b"HEAD":
            metrics.bytesSent.inc(len(data))

    def finish(self) -> None:
        if self._gone:
            # An answer to nobody: the request ends, aborted, when the loss
            # of its connection reaches it; not as a response sent.
            return
        super().finish()

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A handler failed unexpectedly: the client gets a JSON 500 that says
        nothing of the code, the log gets the traceback.  Stock twisted.web
        logs it as critical and answers with its own page; with the client
        gone there is nobody to answer, and a failure the loss caused is no
        error at all.
        """
        if self._gone:
            if not reason.check(*CLIENT_GONE):
                self._log.failure(
                    "{method} {uri} failed after its client went away",
                    reason,
                    level=LogLevel.error,
                    method=self.method.decode("latin-1"),
                    uri=self.uri.decode("latin-1")[:2048],
                )
            return reason
        self._log.failure(
            "handling {method} {uri} failed", reason, method=self.method, uri=self.uri
        )
        if self.finished or self._disconnected:
            return reason
        if self.startedWriting:
            # Half an answer is out: nothing true can follow it.
            self.loseConnection()
            return reason
        self.answerError(500, "the service failed to answer this request; its log says why")
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

    def answerError(self, code: int, message: str) -> None:
        """Answer C{code} with a JSON error saying C{message}, and finish."""
        body = errorBody(message)
        self.setResponseCode(code)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def _handleStar(self) -> None:
        # Stock twisted.web answers a request for "*" other than OPTIONS
        # with an empty 405.
        if self.method == b"OPTIONS":
            super()._handleStar()
            return
        self.setHeader(b"Allow", b"OPTIONS")
        self.answerError(405, "only OPTIONS applies to *: name a path, such as /")

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


class _RateWatch:
    """
    Whether a body arrives at C{rate} bytes a second or faster, measured
    over windows of C{window} seconds of reading: the time the service
    itself does not read (its handler has not started, its store is full)
    does not count against the client.  Calls C{tooSlow} when a window
    ends short.
    """

    def __init__(
        self, clock: IReactorTime, rate: float, window: float, tooSlow: Callable[[], None]
    ) -> None:
        self._clock = clock
        self._rate = rate
        self._window = window
        self._tooSlow = tooSlow
        self._bytes = 0
        self._elapsed = 0.0
        self._since = 0.0
        self._call: IDelayedCall | None = None

    def reset(self) -> None:
        """A new body: a new window."""
        self.hold()
        self._bytes = 0
        self._elapsed = 0.0

    def count(self, n: int) -> None:
        self._bytes += n

    def run(self) -> None:
        """The body is being read: its time counts."""
        if self._call is None:
            self._since = self._clock.seconds()
            self._call = self._clock.callLater(max(0.0, self._window - self._elapsed), self._check)

    def hold(self) -> None:
        """The body is not being read (or is over): its time stops."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
            self._elapsed += self._clock.seconds() - self._since

    def _check(self) -> None:
        self._call = None
        if self._bytes < self._rate * self._window:
            self._tooSlow()
            return
        self._bytes = 0
        self._elapsed = 0.0
        self.run()


def _answer(code: int, message: str, date: bytes, withBody: bool) -> list[bytes]:
    """A whole HTTP/1.1 answer with a JSON error, for a request the parser
    refused (no request object answers it)."""
    body = errorBody(message)
    head = [
        b"HTTP/1.1 %d %s\r\n" % (code, _REASONS.get(code) or http.RESPONSES.get(code, b"Error")),
        b"Date: %s\r\n" % date,
        b"Content-Type: application/json\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n",
        b"\r\n",
    ]
    return head + [body] if withBody else head


class StreamingChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that dispatches each request once its headers are
    in, and stops reading the socket while any reason to pause remains:
    the body's consumer is full, the handler has not started reading, or
    the response cannot be sent.

    What twisted.web's parser refuses is answered here with a JSON error
    and a close (L{_refuse}): a request line or header block too large
    (414, 431), malformed ones (400), a body framed both by
    C{Content-Length} and C{Transfer-Encoding}, by several lengths or by a
    coding other than C{chunked} alone (400: a proxy in front may read such
    a body otherwise, RFC 9112 section 6.3), headers slower than the
    header timeout (408).  A body whose chunks are malformed, or that comes
    slower than the site's minimum rate, is cut (L{StreamingRequest.refuseBody}).
    """

    _log = Logger()

    #: What the site sets (see L{StreamingSite}).
    headerTimeout: float | None = HEADER_TIMEOUT
    minBodyRate: float = MIN_BODY_RATE
    rateWindow: float = RATE_WINDOW

    def __init__(self) -> None:
        super().__init__()
        self._readPauses: set[str] = set()
        self._pausedTimeOut: Any = None
        self._current: StreamingRequest | None = None
        self._lingering: Any = None
        #: A request the parser could not take was answered: read nothing more.
        self._refused = False
        #: The current body's framing was broken: drop what follows of it.
        self._dropBody = False
        #: L{loseConnection} was called: what still arrives is not wanted.
        self._closing = False
        #: The framing headers of the request being parsed.
        self._lengths: list[int] = []
        self._codings: list[bytes] = []
        #: Between requests and in a header block: when it must be in by.
        self._awaitingHeaders = True
        self._headerBytes = False
        self._headerDeadline: IDelayedCall | None = None
        self._rate: _RateWatch | None = None
        #: Since when the client has read nothing of a response.
        self._writeStall: IDelayedCall | None = None
        self._idleTimeout: float | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        #: The idle timeout as the site set it (C{timeOut} is L{None}
        #: while a request is handled).
        self._idleTimeout = self.timeOut
        # Read bodies in larger gulps than the default 64 KiB: fewer trips
        # through the parser and the writer per megabyte.
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE  # type: ignore[union-attr]
        sendLarger(self.transport)
        site = getattr(self, "site", None)
        for name in ("headerTimeout", "minBodyRate", "rateWindow"):
            if hasattr(site, name):
                setattr(self, name, getattr(site, name))
        if self.minBodyRate > 0:
            self._rate = _RateWatch(self._clock, self.minBodyRate, self.rateWindow, self._tooSlow)
        # The first request's headers are due from the connection's start.
        self._startHeaderDeadline()

    @property
    def _clock(self) -> IReactorTime:
        """The site's reactor (a channel is made by its site)."""
        clock: IReactorTime = self.site.reactor  # type: ignore[attr-defined]
        return clock

    # Refusing what the parser cannot take

    def _refuse(self, code: int, message: str) -> None:
        """
        Answer a request no request object will answer with C{code} and a
        JSON error saying C{message}; read nothing more of the connection,
        and close it (lingering: the client may still be sending).
        """
        if self._refused:
            return
        self._refused = True
        self._stopHeaderDeadline()
        self.clearLineBuffer()
        self.persistent = False
        self._log.info(
            "refused a request from {peer}: {code} {message}",
            peer=str(self.transport.getPeer()) if self.transport is not None else "?",
            code=code,
            message=message,
        )
        date = http.datetimeToString(self._clock.seconds())
        withBody = getattr(self, "_command", None) != b"HEAD"
        if self.transport is not None:
            self.transport.writeSequence(_answer(code, message, date, withBody))
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # What the checks below do not foresee, twisted.web still refuses.
        self._refuse(400, "the request is not well-formed HTTP/1.1")

    def _lineTooLong(self, firstLine: bool) -> None:
        if firstLine:
            self._refuse(
                414,
                f"the request line is longer than {self.totalHeadersSize} bytes: shorten the URL",
            )
        else:
            self._refuse(
                431,
                f"the request's header block is larger than {self.totalHeadersSize} bytes:"
                " send fewer or shorter headers",
            )

    @property
    def _inRequestLine(self) -> bool:
        return bool(getattr(self, "_HTTPChannel__first_line", 0))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._lineTooLong(self._inRequestLine)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        first = getattr(self, "_HTTPChannel__first_line", 0)
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._lineTooLong(bool(first))
            return
        if first and self.persistent and (line or first != 1):
            try:
                http._parseRequestLine(line)
            except ValueError:
                self._refuse(400, _requestLineProblem(line))
                return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name):
            self._refuse(
                400,
                f"the header line {line[:60].decode('latin-1')!r} is not a name, a colon and"
                " a value",
            )
            return False
        if len(value.translate(None, b"\x00\r\n")) != len(value):
            self._refuse(400, f"the header {name[:60].decode('latin-1')} holds a NUL, CR or LF")
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, f"the request has more than {self.maxHeaders} header lines")
            return False
        return bool(super().headerReceived(line))

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        """Only note how the body is framed: it is decided once all the
        headers are in (L{_chooseFraming}), whatever their order."""
        if header == b"Content-Length":
            if self._lengths:
                self._refuse(400, "the request has several Content-Length headers: send one")
                return False
            if not data.isdigit():
                self._refuse(
                    400,
                    "Content-Length must be a number of bytes,"
                    f" not {data[:40].decode('latin-1')!r}",
                )
                return False
            if len(data) > 19 or int(data) > MAX_CONTENT_LENGTH:
                self._refuse(
                    413, f"a Content-Length of {len(data)} digits is more than this service takes"
                )
                return False
            self._lengths.append(int(data))
        elif header == b"Transfer-Encoding":
            self._codings.extend(c.strip(b" \t").lower() for c in data.split(b","))
        return True

    def _chooseFraming(self) -> bool:
        """
        The body's length and decoder, by RFC 9112 section 6.3; or, for
        framing that a proxy before the service might read otherwise, a
        refusal (a request smuggled in a body).
        """
        lengths, codings = self._lengths, self._codings
        self._lengths, self._codings = [], []
        request = self.requests[-1]
        if codings:
            if lengths:
                self._refuse(
                    400,
                    "the request has both Transfer-Encoding and Content-Length: send one of them",
                )
                return False
            if codings != [b"chunked"]:
                said = b", ".join(codings)[:80].decode("latin-1")
                self._refuse(
                    400,
                    f"Transfer-Encoding must be chunked, alone; not {said!r}",
                )
                return False
            if self._version != b"HTTP/1.1":
                self._refuse(400, "a chunked body needs HTTP/1.1")
                return False
            self.length = None
            self._transferDecoder = http._ChunkedTransferDecoder(
                request.handleContentChunk, self._finishRequestBody
            )
        elif lengths:
            self.length = lengths[0]
            self._transferDecoder = http._IdentityTransferDecoder(
                self.length, request.handleContentChunk, self._finishRequestBody
            )
        return True

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused or self._dropBody or self._closing:
            return
        if self._handlingRequest:
            super().rawDataReceived(data)
            return
        if self._rate is not None:
            self._rate.count(len(data))
        try:
            self._transferDecoder.dataReceived(data)  # type: ignore[union-attr]
        except http._MalformedChunkedDataError as e:
            self._dropBody = True
            if self._current is not None:
                self._current.refuseBody(400, f"the chunked request body is malformed: {e}")

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaitingHeaders:
            self._headerBytes = True
            if self._headerDeadline is None:
                self._startHeaderDeadline()
        super().dataReceived(data)

    # Deadlines: the headers, the body's rate, a response not read

    def _startHeaderDeadline(self) -> None:
        if self.headerTimeout and self._headerDeadline is None:
            self._headerDeadline = self.callLater(self.headerTimeout, self._headersTooSlow)

    def _stopHeaderDeadline(self) -> None:
        deadline, self._headerDeadline = self._headerDeadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _headersTooSlow(self) -> None:
        self._headerDeadline = None
        if not self._awaitingHeaders or self._refused:
            return
        if self._headerBytes:
            self._refuse(
                408,
                f"the request's headers did not arrive within {self.headerTimeout:g} seconds",
            )
        else:
            # Nothing was asked: nothing to answer.
            self._log.info(
                "closing a connection from {peer} that sent nothing for {timeout:g} seconds",
                peer=str(self.transport.getPeer()) if self.transport is not None else "?",
                timeout=self.headerTimeout,
            )
            self.persistent = False
            self.loseConnection()

    def _watchBody(self) -> None:
        """Run the rate watch while the client is the one a body waits for."""
        if self._rate is None:
            return
        request = self._current
        if (
            request is not None
            and not request._bodyDone
            and not request._cut
            and not self._readPauses
            and self._lingering is None
            and not self._refused
        ):
            self._rate.run()
        else:
            self._rate.hold()

    def _tooSlow(self) -> None:
        request = self._current
        if request is None or request._bodyDone:
            return
        message = (
            f"the request body came slower than {self.minBodyRate:g} bytes a second over"
            f" {self.rateWindow:g} seconds"
        )
        self._log.info(
            "cut a body from {peer}: {message}",
            peer=str(self.transport.getPeer()) if self.transport is not None else "?",
            message=message,
        )
        request.refuseBody(408, message)

    def _clientStalled(self) -> None:
        self._writeStall = None
        self._log.info(
            "cut a connection from {peer} whose client read nothing for {timeout:g} seconds",
            peer=str(self.transport.getPeer()) if self.transport is not None else "?",
            timeout=self._idleTimeout,
        )
        # Its send buffer is full: a clean close would wait for it forever.
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif self.transport is not None:
            self.transport.loseConnection()

    # Reading, paused for any of several reasons

    def pauseReading(self, reason: str) -> None:
        if not self._readPauses:
            self._networkProducer.pauseProducing()
            # The idle timeout measures the client's silence; while we are
            # the one not reading, it must not run.
            self._pausedTimeOut = self.setTimeout(None)
        self._readPauses.add(reason)
        self._watchBody()

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
        self._watchBody()

    def allHeadersReceived(self) -> None:
        self._stopHeaderDeadline()
        self._awaitingHeaders = False
        if not self._chooseFraming():
            # Refused: the stock parser then reads the body in raw mode,
            # where nothing more is read.
            self.length = None
            return
        req = self.requests[-1]
        req.parseCookies()
        self.persistent = self.checkPersistence(req, self._version)
        req.gotLength(self.length)
        self._current = req
        self._dropBody = False
        if self._rate is not None:
            self._rate.reset()
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
        self._watchBody()

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
        if self.persistent:
            # The next request's headers are due from its first byte.
            self._awaitingHeaders = True
            self._headerBytes = False
        super().requestDone(request)
        self._watchBody()

    def loseConnection(self) -> None:
        """
        Close, lingering if a body is still arriving or a refused request
        may still be: closing a socket with unread bytes sends a reset,
        which can destroy the answer before the client reads it.  So send
        the answer and a FIN, read and drop what still comes for up to
        L{LINGER_SECONDS}, then close (as nginx's C{lingering_close}).
        """
        if self._closing:
            return
        self._closing = True
        request = self._current
        halfClose = getattr(self.transport, "loseWriteConnection", None)
        arriving = self._refused or (request is not None and not request._bodyDone)
        if halfClose is None or not arriving:
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
        self._stopHeaderDeadline()
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self._lingering = self.callLater(LINGER_SECONDS, self.transport.loseConnection)  # type: ignore[union-attr]
        self._readPauses.clear()
        self._watchBody()
        self._networkProducer.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        self._stopHeaderDeadline()
        if self._rate is not None:
            self._rate.reset()
        if self._writeStall is not None and self._writeStall.active():
            self._writeStall.cancel()
        self._writeStall = None
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
        if not self._waitingForTransport and self.requests:
            metrics = getattr(self.requests[0], "metrics", None)
            if metrics is not None:
                metrics.pauses["client"].inc()
        self._waitingForTransport = True
        if self._idleTimeout and self._writeStall is None:
            # A client that reads nothing of the answer for the idle
            # timeout is gone, or holding the connection: cut it.
            self._writeStall = self.callLater(self._idleTimeout, self._clientStalled)
        if self._requestProducer is not None:
            self._requestProducer.pauseProducing()
        if not self._handlingRequest:
            self.pauseReading("transport")

    def resumeProducing(self) -> None:
        self._waitingForTransport = False
        if self._writeStall is not None:
            if self._writeStall.active():
                self._writeStall.cancel()
            self._writeStall = None
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        if not self._handlingRequest:
            self.resumeReading("transport")


class StreamingSite(server.Site):
    """
    A L{server.Site} whose requests stream their bodies (HTTP/1.1 only).

    @param headerTimeout: seconds a request's header block may take to
        arrive (from the connection's start for its first request, from its
        first byte for the next ones); L{None} or 0 for no limit.
    @param minBodyRate: the slowest a body may arrive, in bytes a second
        over C{rateWindow} seconds of reading; 0 for no minimum.
    """

    protocol = StreamingChannel  # type: ignore[assignment]
    requestFactory = StreamingRequest

    def __init__(
        self,
        resource: Any,
        *args: Any,
        headerTimeout: float | None = HEADER_TIMEOUT,
        minBodyRate: float = MIN_BODY_RATE,
        rateWindow: float = RATE_WINDOW,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)
        if minBodyRate < 0 or rateWindow <= 0:
            raise ValueError("the minimum body rate is 0 or more over a window of more than 0 s")
        self.headerTimeout = headerTimeout
        self.minBodyRate = minBodyRate
        self.rateWindow = rateWindow

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


__all__ = [
    "CLIENT_GONE",
    "BodyAborted",
    "BodyRefused",
    "IStreamingRequest",
    "PotentialDataLoss",
    "RequestBody",
    "StreamingChannel",
    "StreamingRequest",
    "StreamingSite",
    "errorBody",
]
