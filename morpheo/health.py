# -*- test-case-name: tests.integration.test_deployment -*-
"""
C{python -m morpheo.health [--pid PID | OPTIONS...]}: whether a running
service answers C{/health}, asked where that service listens: a container's
health check that follows its configured port.

Without arguments it reads the command line of the container's main
process (process 1, or the first C{twistd ... morpheo-storage} under it,
as with C{docker run --init}; C{--pid} names another), and takes the
options given to the plugin there; with OPTIONS, those are the service's.
They are read by the plugin's own parser, and the first listener they
describe (C{--host}/C{--port}, C{--cert}, or the first C{--listen}: TCP,
TLS or a UNIX socket) is asked.  Exit status 0 when it answers 200, else 1
with one line on stderr that says why.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import sys
from collections.abc import Sequence

import psutil  # type: ignore[import-untyped]
from attrs import frozen
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from .tap import Options

PLUGIN = "morpheo-storage"
TIMEOUT = 5.0
#: Addresses that mean "every interface": asked on the loopback.
_ANY = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


class HealthError(Exception):
    """The service cannot be asked, or did not answer as a live one."""


@frozen
class Target:
    """Where to ask: C{http}, C{https} or C{unix}, and the address."""

    scheme: str
    host: str
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/health"


class _ListeningOptions(Options):
    """The plugin's options, read only for where the service listens."""

    def opt_auth(self, description: str) -> None:
        """A source of users (ignored here)."""

    def postOptions(self) -> None:
        pass


def pluginArguments(commandLine: Sequence[str]) -> list[str] | None:
    """The arguments after C{morpheo-storage} in a twistd command line."""
    for i, argument in enumerate(commandLine):
        if argument == PLUGIN:
            return list(commandLine[i + 1 :])
    return None


def serviceArguments(pid: int = 1) -> list[str]:
    """
    The plugin's arguments of the service running as C{pid}, or as the
    first process under it that is one.
    """
    try:
        process = psutil.Process(pid)
        for candidate in [process, *process.children(recursive=True)]:
            found = pluginArguments(candidate.cmdline())
            if found is not None:
                return found
    except psutil.Error as e:
        raise HealthError(f"cannot read the command line of process {pid}: {e}") from None
    raise HealthError(f"process {pid} is not twistd {PLUGIN}, nor is any process under it")


def target(arguments: Sequence[str]) -> Target:
    """Where the service these options describe answers first."""
    options = _ListeningOptions()
    try:
        options.parseOptions(list(arguments))
    except usage.UsageError as e:
        raise HealthError(f"cannot read the service's options: {e}") from None
    listen: list[str] = options["listen"]
    if not listen:
        scheme = "https" if options["cert"] else "http"
        return _checkedPort(
            Target(scheme, _ANY.get(options["host"], options["host"]), options["port"])
        )
    # Twisted's own parser, on a reactor that only records what it is
    # asked to listen on.
    reactor = MemoryReactor()
    try:
        serverFromString(reactor, listen[0]).listen(Factory())
    except Exception as e:
        raise HealthError(f"cannot read --listen {listen[0]!r}: {e}") from None
    if reactor.tcpServers:
        port, _, _, interface = reactor.tcpServers[0]
        return _checkedPort(Target("http", _ANY.get(interface, interface), port))
    if reactor.sslServers:
        port, _, _, _, interface = reactor.sslServers[0]
        return _checkedPort(Target("https", _ANY.get(interface, interface), port))
    if reactor.unixServers:
        return Target("unix", str(reactor.unixServers[0][0]))
    raise HealthError(f"--listen {listen[0]!r} is not TCP, TLS or a UNIX socket")


def _checkedPort(where: Target) -> Target:
    if where.port == 0:
        raise HealthError("the service listens on any free port (--port 0): name it with --port")
    return where


class _UNIXConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def probe(where: Target, timeout: float = TIMEOUT) -> None:
    """Ask C{/health}; L{HealthError} unless it answers 200."""
    connection: http.client.HTTPConnection
    if where.scheme == "unix":
        connection = _UNIXConnection(where.host, timeout)
    elif where.scheme == "https":
        # Liveness on this host's own listener: the certificate is the
        # service's business, not the health check's.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(
            where.host, where.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(where.host, where.port, timeout=timeout)
    try:
        connection.request("GET", "/health", headers={"Host": "localhost"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        raise HealthError(f"{where}: {e}") from None
    finally:
        connection.close()
    if status != 200:
        raise HealthError(f"{where} answered {status}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["--pid"] and len(args) == 2 and args[1].isdigit():
            arguments = serviceArguments(int(args[1]))
        elif args:
            arguments = args
        else:
            arguments = serviceArguments()
        probe(target(arguments))
    except HealthError as e:
        print(f"morpheo.health: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
