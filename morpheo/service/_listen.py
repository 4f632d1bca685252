# -*- test-case-name: tests.integration.test_listen,tests.integration.test_workers -*-
"""
Where the service listens: Twisted server endpoint descriptions
(C{--listen tcp:8000}, C{ssl:8443:privateKey=...:certKey=...},
C{unix:/run/morpheo.sock}), several at once, or the original's shorthand
C{--host/--port} with C{--cert/--key} for TLS.  Both ways to TLS serve the
same protocol versions and cipher suites (L{morpheo.service._tls}).
"""

from __future__ import annotations

import socket
from typing import Any

from attrs import field, frozen
from OpenSSL import SSL
from twisted.internet import tcp, unix
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from ._tls import loadCertificateOptions, serverOptions

#: The accept queue of the --host/--port listener (nginx's default): with
#: Twisted's 50, a burst of connections (hundreds of slow clients) makes the
#: next ones wait a second for the kernel to retry their SYN.
BACKLOG = 511


class ListenError(ValueError):
    """An endpoint cannot be made; the message names it."""


@frozen
class Listener:
    """An endpoint to listen on, and whether it speaks TLS."""

    endpoint: IStreamServerEndpoint
    tls: bool
    description: str
    #: The TLS settings of a TLS endpoint, for a worker process that
    #: serves its socket (L{adopt}).
    tlsOptions: CertificateOptions | None = field(default=None, repr=False)


def refuseWeakTLS(description: str) -> str | None:
    """
    Why an C{ssl:} description would allow less than TLS 1.2, or None.
    (The service gives its C{ssl:} endpoints its own minimum version, which
    C{sslmethod} would override.)
    """
    if description.split(":", 1)[0].lower() == "ssl" and "sslmethod=" in description.lower():
        return (
            f"--listen {description!r}: sslmethod is not allowed,"
            " the service serves TLS 1.2 or newer only"
        )
    return None


def _hardened(endpoint: SSL4ServerEndpoint, description: str) -> None:
    """
    Give an C{ssl:} endpoint the service's TLS settings: Twisted's parser
    builds its context factory with Twisted's default suites, which
    still allow static RSA key exchange and CBC with SHA-1.  Its
    certificate, chain and key are kept.  (C{_sslContextFactory} is
    private: if a Twisted release renames it, start-up stops here, loudly.)
    """
    parsed = getattr(endpoint, "_sslContextFactory", None)
    if (
        not isinstance(parsed, CertificateOptions)
        or parsed.privateKey is None
        or parsed.certificate is None
    ):
        raise ListenError(
            f"--listen {description!r}: the installed Twisted's ssl: endpoint no longer"
            " shows its TLS settings, and the service will not serve Twisted's defaults"
        )
    try:
        endpoint._sslContextFactory = serverOptions(
            parsed.privateKey, parsed.certificate, parsed.extraCertChain
        )
    except (SSL.Error, ValueError, TypeError) as e:
        raise ListenError(
            f"--listen {description!r}: cannot use its certificate and key: {e}"
        ) from None


def makeListeners(
    reactor: Any,
    *,
    listen: tuple[str, ...],
    host: str,
    port: int,
    cert: str | None,
    key: str | None,
) -> list[Listener]:
    """
    The endpoints of C{listen}, or of the shorthand when C{listen} is empty.
    TLS files are read here, at start-up, so that a bad one stops it.
    """
    if not listen:
        if cert and key:
            options = loadCertificateOptions(cert, key)
            return [
                Listener(
                    SSL4ServerEndpoint(reactor, port, options, backlog=BACKLOG, interface=host),
                    True,
                    f"ssl:{port}",
                    options,
                )
            ]
        endpoint = TCP4ServerEndpoint(reactor, port, backlog=BACKLOG, interface=host)
        return [Listener(endpoint, False, f"tcp:{port}")]
    listeners = []
    for description in listen:
        reason = refuseWeakTLS(description)
        if reason:
            raise ListenError(reason)
        try:
            endpoint = serverFromString(reactor, description)
        except Exception as e:
            raise ListenError(f"--listen {description!r}: {e}") from None
        tls = isinstance(endpoint, SSL4ServerEndpoint)
        hardened: CertificateOptions | None = None
        if tls:
            _hardened(endpoint, description)
            hardened = endpoint._sslContextFactory
        listeners.append(Listener(endpoint, tls, description, hardened))
    return listeners


def adopt(
    reactor: Any, listener: Listener, fileDescriptor: int, factory: IProtocolFactory
) -> IListeningPort:
    """
    Serve C{factory} on a listening socket another process bound for
    C{listener} (the parent of C{--workers}), with its TLS if it has
    some.  The reactor serves a copy of the descriptor: the caller closes
    C{fileDescriptor}.
    """
    probe = socket.socket(fileno=fileDescriptor)
    try:
        family = probe.family
    finally:
        probe.detach()
    if listener.tls:
        assert listener.tlsOptions is not None, "made by makeListeners"
        factory = TLSMemoryBIOFactory(listener.tlsOptions, False, factory)
    if family == socket.AF_UNIX:
        # As the reactor's adoptStreamPort does, with a port that leaves the
        # socket's file alone.
        port: IListeningPort = _AdoptedUNIXPort._fromListeningDescriptor(
            reactor, fileDescriptor, factory
        )
        port.startListening()
        return port
    return reactor.adoptStreamPort(fileDescriptor, family, factory)  # type: ignore[no-any-return]


class _AdoptedUNIXPort(unix.Port):
    """
    A UNIX socket served by a worker: its file is the parent's to remove
    when the service stops, not a worker's when it stops or dies (its
    siblings still serve it).
    """

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)


def describe(port: IListeningPort, tls: bool) -> str:
    """C{http://HOST:PORT/}, C{https://HOST:PORT/} or C{unix:PATH} (C{unix+tls:PATH})."""
    address = port.getHost()
    name = getattr(address, "name", None)
    if name is not None and not hasattr(address, "port"):
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return f"unix{'+tls' if tls else ''}:{path}"
    hostText = str(getattr(address, "host", "?"))
    if ":" in hostText:
        hostText = f"[{hostText}]"
    return f"{'https' if tls else 'http'}://{hostText}:{getattr(address, 'port', '?')}/"


__all__ = ["ListenError", "Listener", "adopt", "describe", "makeListeners", "refuseWeakTLS"]
