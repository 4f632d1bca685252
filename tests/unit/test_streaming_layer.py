"""
The streaming layer in memory (C{StringTransport}, a fake clock): when the
socket is read and when it is not, 100-continue, early answers, a request
whose client is gone.  Also pins the private parts of twisted.web.http that
the layer relies on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web._newclient import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from morpheo.web._streaming import BodyAborted, IStreamingRequest, StreamingChannel, StreamingSite

from .harness import capturedLog, errors


class Collector(Protocol):
    #: What delivers the body: a push producer, to pause and resume.
    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.ended = reason


class Holder(Resource):
    """Keeps each request for the test to drive."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        # Streaming requests: a body to deliver, no content.
        self.requests: list[Any] = []

    def render(self, request: http.Request) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


def connect(resource: Resource) -> tuple[StreamingChannel, StringTransport, Clock]:
    clock = Clock()
    site = StreamingSite(resource, reactor=clock)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


def post(length: int, extra: str = "") -> bytes:
    return f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def test_private_parts_of_twisted_web_still_there():
    """If a Twisted release renames these, the layer breaks: fail here first."""
    channel, transport, _ = connect(Holder())
    for name in (
        "_networkProducer",
        "_handlingRequest",
        "_waitingForTransport",
        "_savedTimeOut",
        "_requestProducer",
        "_send100Continue",
        "_dataBuffer",
        "_transferDecoder",
        # The parser's hooks the JSON refusals take over.
        "_HTTPChannel__first_line",
        "_receivedHeaderSize",
        "_receivedHeaderCount",
        "_finishRequestBody",
        "_maybeChooseTransferDecoder",
        "_respondToBadRequestAndDisconnect",
        "clearLineBuffer",
    ):
        assert hasattr(channel, name), name
    channel.dataReceived(post(3))
    for name in ("_command", "_path", "_version"):
        assert hasattr(channel, name), name
    for name in (
        "_IdentityTransferDecoder",
        "_ChunkedTransferDecoder",
        "_MalformedChunkedDataError",
        "_parseRequestLine",
    ):
        assert hasattr(http, name), name
    assert hasattr(server.Request, "_handleStar")
    # The stock parser still hands the framing headers to this hook.
    fresh, _, _ = connect(Holder())
    calls: list[bytes] = []

    def hook(header: bytes, data: bytes) -> bool:
        calls.append(header)
        return True

    fresh._maybeChooseTransferDecoder = hook  # type: ignore[method-assign]
    fresh.dataReceived(post(0))
    assert b"Content-Length" in calls


def test_routed_at_headers_and_not_read_until_asked():
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(10))
    [request] = holder.requests
    assert IStreamingRequest.providedBy(request)
    assert request.body.length == 10
    assert transport.producerState == "paused"
    collector = Collector()
    request.body.deliverBody(collector)
    assert transport.producerState == "producing"
    channel.dataReceived(b"0123456789")
    assert collector.data == b"0123456789"
    assert collector.ended is not None and collector.ended.check(ResponseDone)


def test_consumer_pause_stops_reading_and_twisted_does_not_undo_it():
    holder = Holder()
    channel, transport, clock = connect(holder)
    channel.dataReceived(post(10))
    [request] = holder.requests
    collector = Collector()
    request.body.deliverBody(collector)
    channel.dataReceived(b"01234")
    collector.transport.pauseProducing()
    assert transport.producerState == "paused"
    # The transport's write side drains and resumes the channel: reading
    # must stay paused while the consumer is full.
    channel.pauseProducing()
    channel.resumeProducing()
    assert transport.producerState == "paused"
    # A long pause of ours is not the client's silence: no idle timeout.
    clock.advance(3600)
    assert not transport.disconnecting
    collector.transport.resumeProducing()
    assert transport.producerState == "producing"
    channel.dataReceived(b"56789")
    assert collector.data == b"0123456789"
    assert collector.ended is not None and collector.ended.check(ResponseDone)
    # And the client's own silence still times out once the body is in.
    request.finish()
    clock.advance(3600)
    assert transport.disconnecting


def test_100_continue_only_when_the_body_is_asked_for():
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(5, "Expect: 100-continue\r\n"))
    assert b"100 Continue" not in transport.value()
    holder.requests[0].body.deliverBody(Collector())
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_early_answer_to_a_100_continue_closes_instead_of_reading():
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(5, "Expect: 100-continue\r\n"))
    request = holder.requests[0]
    request.setResponseCode(401)
    request.finish()
    assert b"100 Continue" not in transport.value()
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in transport.value()
    assert transport.disconnecting


def test_early_answer_discards_a_small_rest_and_keeps_the_connection():
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(6))
    first = holder.requests[0]
    first.setResponseCode(409)
    first.finish()
    assert b"Connection: close" not in transport.value()
    channel.dataReceived(b"abcdef" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(holder.requests) == 2
    assert holder.requests[1].uri == b"/next"
    assert not transport.disconnecting


def test_disconnect_mid_body_reaches_the_consumer():
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(100))
    collector = Collector()
    holder.requests[0].body.deliverBody(collector)
    channel.dataReceived(b"partial")
    channel.connectionLost(Failure(ConnectionError("gone")))
    assert collector.ended is not None and collector.ended.check(BodyAborted)


def test_content_is_refused_loudly():
    """Code written for stock twisted.web must not read an empty body."""
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(3))
    try:
        holder.requests[0].content.read()
    except RuntimeError as e:
        assert "deliverBody" in str(e)
    else:
        raise AssertionError("request.content.read() should refuse")


def test_chunked_body_streams():
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    request = holder.requests[0]
    assert request.body.length is None
    collector = Collector()
    request.body.deliverBody(collector)
    channel.dataReceived(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert collector.data == b"hello world"
    assert collector.ended is not None and collector.ended.check(ResponseDone)


class Stoppable:
    """A push producer that records being stopped."""

    stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


def test_a_request_whose_client_is_gone_answers_nobody():
    """
    A transport stops its producer (the channel) before it reports the
    loss: from then on the request writes nothing, finishes nothing, turns
    no failure into a 500, and stops a producer registered late at once;
    it ends when the loss reaches it, through notifyFinish.
    """
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
    [request] = holder.requests
    request.write(b"the start")
    sent = transport.value()
    ended: list[Failure] = []
    request.notifyFinish().addErrback(ended.append)
    with capturedLog() as events:
        channel.stopProducing()
        request.write(b"the rest")
        late = Stoppable()
        request.registerProducer(late, True)
        assert late.stopped
        request.unregisterProducer()
        request.processingFailed(Failure(CancelledError("the transfer was stopped")))
        request.finish()
        assert transport.value() == sent
        assert not request.finished and not ended
        assert errors(events) == []
        # A failure the loss did not cause is still news, as an error.
        request.processingFailed(Failure(ZeroDivisionError("a bug")))
        [bug] = errors(events)
        assert bug["log_level"] == LogLevel.error and bug["log_failure"].check(ZeroDivisionError)
        assert transport.value() == sent
        channel.connectionLost(Failure(ConnectionLost("gone")))
        assert len(ended) == 1
        # After the loss too, late calls do nothing and do not fail.
        request.unregisterProducer()
        request.finish()


def test_a_request_is_gone_before_its_body_reader_hears_of_the_loss():
    """
    The reader of a body cut by the loss answers at once (as an upload
    refused when its body breaks off): that answer goes nowhere and is not
    taken for a response sent.
    """
    holder = Holder()
    channel, transport, _ = connect(holder)
    channel.dataReceived(post(100, "Expect: 100-continue\r\n"))
    [request] = holder.requests
    ended: list[Failure] = []
    request.notifyFinish().addErrback(ended.append)

    class AnswersAtTheEnd(Collector):
        def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
            super().connectionLost(reason)
            request.setResponseCode(200)
            request.write(b"done")
            request.finish()

    collector = AnswersAtTheEnd()
    request.body.deliverBody(collector)
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.connectionLost(Failure(ConnectionLost("gone")))
    assert collector.ended is not None and collector.ended.check(BodyAborted)
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not request.finished and len(ended) == 1
