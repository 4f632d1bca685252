"""
Which downloads L{morpheo.web._sendfile} takes: a plain TCP connection's,
never the in-memory transports' (nor TLS: those keep the threaded
producer); and the private parts of Twisted's TCP transport it reads to
know that the transport has sent all it holds.  The sending itself needs
real sockets and a real reactor: tests/integration/test_sendfile.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import alsoProvides

from morpheo.web._sendfile import _flushed, sendfileTransport


class _Request:
    def __init__(self, transport: object) -> None:
        self.channel = type("Channel", (), {"transport": transport})()


@pytest.fixture
def server() -> Iterator[tcp.Server]:
    """A real TCP transport over one end of a socket pair, on a memory reactor."""
    mine, theirs = socket.socketpair()
    port: Any = None
    transport = tcp.Server(mine, Protocol(), ("127.0.0.1", 1), port, 1, MemoryReactorClock())
    try:
        yield transport
    finally:
        mine.close()
        theirs.close()


def test_a_plain_tcp_connection_is_sent_files(server: tcp.Server) -> None:
    assert sendfileTransport(_Request(server)) is server  # type: ignore[arg-type]


def test_memory_and_tls_transports_are_not(server: tcp.Server) -> None:
    assert sendfileTransport(_Request(StringTransport())) is None  # type: ignore[arg-type]
    assert sendfileTransport(_Request(None)) is None  # type: ignore[arg-type]
    alsoProvides(server, ISSLTransport)
    assert sendfileTransport(_Request(server)) is None  # type: ignore[arg-type]


def test_the_transports_buffer_is_where_it_is_looked_for(server: tcp.Server) -> None:
    """If a Twisted release moves these, the files would overtake the heads."""
    assert _flushed(server)
    server.write(b"HTTP/1.1 200 OK\r\n")
    assert not _flushed(server)
    server.doWrite()  # the socket pair takes it all
    assert _flushed(server)
