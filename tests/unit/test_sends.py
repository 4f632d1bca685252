"""
Larger sends on a client's plain TCP socket (L{sendLarger}): a transport
sends up to the limit given a call, nothing when its socket is full, and
says its connection is lost when the peer went; other transports are
left as they are.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from morpheo.web._streaming import SEND_SIZE, sendLarger


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Connection, socket.socket]]:
    ours, theirs = socket.socketpair()
    transport = tcp.Connection(ours, Protocol(), MemoryReactor())
    yield transport, theirs
    ours.close()
    theirs.close()


def received(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_aPlainTransportSendsUpToTheLimitACall(
    pair: tuple[tcp.Connection, socket.socket],
) -> None:
    transport, peer = pair
    assert sendLarger(transport, 1000)
    assert transport.writeSomeData(b"x" * 5000) == 1000
    assert transport.writeSomeData(b"y" * 10) == 10
    assert received(peer) == b"x" * 1000 + b"y" * 10


def test_theDefaultLimitIsLargerThanTwisteds(pair: tuple[tcp.Connection, socket.socket]) -> None:
    transport, _ = pair
    assert SEND_SIZE > tcp.Connection.SEND_LIMIT
    assert sendLarger(transport)


def test_aFullSocketTakesNothing(pair: tuple[tcp.Connection, socket.socket]) -> None:
    transport, _ = pair
    assert sendLarger(transport)
    sent = 0
    for _ in range(10_000):
        n = transport.writeSomeData(b"z" * 65536)
        assert isinstance(n, int)
        if n == 0:
            break
        sent += n
    assert sent > 0
    assert transport.writeSomeData(b"z" * 65536) == 0


def test_aPeerGoneIsAConnectionLost(pair: tuple[tcp.Connection, socket.socket]) -> None:
    transport, peer = pair
    assert sendLarger(transport)
    peer.close()
    assert transport.writeSomeData(b"x" * 100) is main.CONNECTION_LOST


def test_otherTransportsAreLeftAsTheyAre() -> None:
    transport = StringTransport()
    assert not sendLarger(transport)
    assert "writeSomeData" not in vars(transport)
