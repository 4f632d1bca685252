# -*- test-case-name: tests.integration.test_listen -*-
"""
Where the service listens: Twisted server endpoint descriptions
(C{--listen tcp:8000}, C{ssl:8443:privateKey=...:certKey=...},
C{unix:/run/morpheo.sock}), several at once, or the original's shorthand
C{--host/--port} with C{--cert/--key} for TLS.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint

from ._tls import loadCertificateOptions

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


def refuseWeakTLS(description: str) -> str | None:
    """
    Why an C{ssl:} description would allow less than TLS 1.2, or None.
    (Twisted's C{ssl:} endpoints start at TLS 1.2 unless C{sslmethod} says
    otherwise.)
    """
    if description.split(":", 1)[0].lower() == "ssl" and "sslmethod=" in description.lower():
        return (
            f"--listen {description!r}: sslmethod is not allowed,"
            " the service serves TLS 1.2 or newer only"
        )
    return None


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
        listeners.append(Listener(endpoint, isinstance(endpoint, SSL4ServerEndpoint), description))
    return listeners


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


__all__ = ["ListenError", "Listener", "describe", "makeListeners", "refuseWeakTLS"]
