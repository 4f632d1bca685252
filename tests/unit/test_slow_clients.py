"""
Slow clients on the fake clock: a header block must be in within the header
timeout however it trickles (the idle timeout restarts at every byte), a
body must come at the minimum rate or be cut with a 408 that leaves nothing
behind (the time the service itself does not read does not count), and a
client that reads nothing of its answer for the idle timeout is cut.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from morpheo.web._streaming import (
    HEADER_TIMEOUT,
    LINGER_SECONDS,
    MIN_BODY_RATE,
    RATE_WINDOW,
    BodyRefused,
    StreamingChannel,
    StreamingSite,
)

from .harness import Service, basic, request, responseHeaders, status

START = b"GET /health HTTP/1.1\r\n"


def test_theDefaultsAreThoseDocumented() -> None:
    assert (HEADER_TIMEOUT, MIN_BODY_RATE, RATE_WINDOW) == (30.0, 1024, 60.0)


def test_headersTricklingByteByByteAreCutAtTheHeaderTimeout(service: Service) -> None:
    connection = service.connect()
    connection.send(START)
    for second in range(1, 30):
        service.advance(1)
        assert connection.send(b"X") == b"", second
    service.advance(1)
    answer = connection.received
    assert status(answer) == 408
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "the request's headers did not arrive within 30 seconds"
    }
    assert responseHeaders(answer)["connection"] == "close"
    service.advance(LINGER_SECONDS)
    assert connection.closed


def test_aConnectionThatSendsNothingIsClosedWithoutAnAnswer(service: Service) -> None:
    connection = service.connect()
    service.advance(HEADER_TIMEOUT - 1)
    assert not connection.closed
    service.advance(1)
    assert connection.closed
    assert connection.received == b""


def test_theNextRequestsHeadersAreDueFromItsFirstByte(service: Service) -> None:
    connection = service.connect()
    assert status(connection.send(request("GET", "/health"))) == 200
    service.advance(50)  # idle, under the idle timeout
    connection.send(START)
    service.advance(29)
    assert not connection.closed and connection.received.count(b"HTTP/1.1 ") == 1
    assert status(connection.send(b"Host: s\r\n\r\n")) == 200
    assert not connection.closed


def test_headersInTimeAreAnswered(service: Service) -> None:
    connection = service.connect()
    connection.send(START)
    service.advance(29)
    assert status(connection.send(b"Host: s\r\n\r\n")) == 200


def test_withoutAHeaderTimeoutOnlySilenceCuts() -> None:
    service = Service(headerTimeout=None)
    connection = service.connect()
    connection.send(START)
    for _ in range(100):
        service.advance(10)
        connection.send(b"X")
    assert not connection.closed
    service.advance(61)
    assert connection.closed


def modelHead(service: Service, length: int) -> bytes:
    algo = service.algo()
    return (
        f"POST /model?algo={algo} HTTP/1.1\r\nHost: storage.test\r\n"
        f"Authorization: {basic()}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_aBodyTooSlowIsCutWith408AndLeavesNothing(service: Service) -> None:
    connection = service.connect()
    head = modelHead(service, 100_000)
    before = service.snapshot()
    connection.send(head + b"x" * 100)
    assert any(state == "pending" for _, _, state in service.rows())
    for _ in range(59):
        service.advance(1)
        connection.send(b"x" * 10)  # 10 bytes a second: far under 1 KiB/s
    assert connection.received == b""
    service.advance(1)
    answer = connection.received
    assert status(answer) == 408
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "the request body came slower than 1024 bytes a second over 60 seconds"
    }
    assert responseHeaders(answer)["connection"] == "close"
    service.advance(LINGER_SECONDS)
    assert connection.closed
    service.assertNothingLeft(before)


def test_aBodyAtTheRateOverManyWindowsIsStored(service: Service) -> None:
    size = 2000 * 150
    connection = service.connect()
    connection.send(modelHead(service, size))
    data = os.urandom(size)
    for second in range(150):
        connection.send(data[second * 2000 : (second + 1) * 2000])
        service.advance(1)
    assert status(connection.received) == 201


def test_withoutAMinimumRateASlowBodyIsWaitedFor() -> None:
    service = Service(minBodyRate=0)
    connection = service.connect()
    connection.send(modelHead(service, 1000))
    for _ in range(99):
        service.advance(10)
        connection.send(b"x" * 10)
    assert connection.received == b"" and not connection.closed
    assert status(connection.send(b"x" * 10)) == 201


# The streaming layer alone: when the service is the one not reading.


class Holder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


class Collector(Protocol):
    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.ended = reason


def connect(**settings: Any) -> tuple[Holder, StreamingChannel, StringTransport, Clock]:
    holder, clock = Holder(), Clock()
    site = StreamingSite(holder, reactor=clock, **settings)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    return holder, channel, transport, clock


def post(length: int) -> bytes:
    return f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def test_aBodyTheHandlerDoesNotReadYetIsNotTooSlow() -> None:
    holder, channel, transport, clock = connect()
    channel.dataReceived(post(10_000))
    clock.advance(3600)
    assert not transport.disconnecting
    assert holder.requests[0].body.received == 0


def test_theServicesOwnPausesDoNotCountAgainstTheClient() -> None:
    holder, channel, transport, clock = connect(rateWindow=30.0)
    channel.dataReceived(post(1_000_000))
    collector = Collector()
    holder.requests[0].body.deliverBody(collector)
    channel.dataReceived(b"x" * 20_000)  # 20 s of reading at 1 KiB/s, in 10
    clock.advance(10)
    collector.transport.pauseProducing()  # the store is full: an hour
    clock.advance(3600)
    assert collector.ended is None
    collector.transport.resumeProducing()
    clock.advance(19)
    assert collector.ended is None
    clock.advance(1)  # 30 s of reading, 20,000 bytes: under 30 KiB
    assert collector.ended is not None and collector.ended.check(BodyRefused)
    refused = collector.ended.value
    assert isinstance(refused, BodyRefused) and refused.code == 408


def test_aFastEnoughWindowStartsTheNextAfresh() -> None:
    holder, channel, transport, clock = connect(rateWindow=10.0, minBodyRate=100)
    channel.dataReceived(post(1_000_000))
    collector = Collector()
    holder.requests[0].body.deliverBody(collector)
    channel.dataReceived(b"x" * 5000)  # five windows' worth, at once
    clock.advance(10)
    assert collector.ended is None
    clock.advance(10)  # the next window got nothing
    assert collector.ended is not None and collector.ended.check(BodyRefused)


def test_anAnsweredRequestWhoseRestIsTooSlowIsClosed() -> None:
    holder, channel, transport, clock = connect(rateWindow=10.0)
    channel.dataReceived(post(100_000))
    request = holder.requests[0]
    request.setResponseCode(409)
    request.finish()
    channel.dataReceived(b"x" * 10)
    clock.advance(10)
    assert transport.disconnecting
    assert transport.value().count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("reads", [False, True])
def test_aClientThatReadsNothingOfItsAnswerIsCut(reads: bool) -> None:
    holder, channel, transport, clock = connect()
    channel.dataReceived(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
    request = holder.requests[0]
    request.write(b"x" * 100_000)
    channel.pauseProducing()  # the transport's buffer is full
    clock.advance(59)
    if reads:
        channel.resumeProducing()
    clock.advance(1)
    assert transport.disconnected is not reads  # StringTransport: aborted
    if reads:
        channel.pauseProducing()
        clock.advance(60)
        assert transport.disconnected
