"""
--listen: several Twisted endpoint descriptions at once (plain TCP, TLS,
a UNIX socket) on one real twistd server, each answering the same routes.
"""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from morpheo.tap import Options
from tests.integration.helpers import curlOK, makePKI
from tests.integration.servers import startServer


def test_tcpTLSAndUnixAtOnce(tmp_path) -> None:
    """
    Plain TCP, TLS and a UNIX socket from one command line: each is logged
    with its address, and each serves the routes (an upload through the
    socket is downloaded through TLS).
    """
    pki = makePKI(tmp_path / "pki")
    # A short directory: UNIX socket paths are limited to ~100 bytes.
    sockets = tempfile.mkdtemp(prefix="morpheo-", dir="/tmp")
    socket = f"{sockets}/storage.sock"
    try:
        server = startServer(
            str(tmp_path / "data"),
            "--listen", "tcp:0:interface=127.0.0.1",
            "--listen", f"ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.leaf}"
            f":extraCertChain={pki.intermediate}",
            "--listen", f"unix:{socket}:mode=600",
        )  # fmt: skip
        try:
            addresses = server.addresses
            plain = next(a for a in addresses if a.startswith("http://127.0.0.1:"))
            tls = next(a for a in addresses if a.startswith("https://127.0.0.1:"))
            assert f"unix:{socket}" in addresses
            viaSocket = ["--unix-socket", socket]
            viaTLS = ["--cacert", str(pki.ca)]
            for base, extra in [(plain, []), (tls, viaTLS), ("http://storage/", viaSocket)]:
                assert '"items"' in curlOK(server, *extra, base + "algo")
                assert json.loads(curlOK(server, *extra, base + "health")) == {"status": "ok"}
            blob = tmp_path / "blob.bin"
            blob.write_bytes(b"through the socket")
            uploaded = json.loads(
                curlOK(
                    server,
                    *viaSocket,
                    "-F",
                    f"size={blob.stat().st_size}",
                    "-F",
                    f"blob=@{blob}",
                    "http://storage/data",
                )
            )
            assert (
                curlOK(server, *viaTLS, f"{tls}data/{uploaded['uuid']}/blob")
                == "through the socket"
            )
        finally:
            assert server.stop() == 0
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def test_listenIsRepeatable() -> None:
    options = Options()
    options.parseOptions(
        ["--user", "a", "--password", "b", "--listen", "tcp:1", "--listen", "unix:/x"]
    )
    assert options.config().listen == ("tcp:1", "unix:/x")


def test_weakTLSRefused() -> None:
    """An ssl: description may not pick an old protocol with sslmethod."""
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="TLS 1.2"):
        Options().parseOptions(["--listen", "ssl:8443:privateKey=k:sslmethod=TLSv1_METHOD"])


def test_certGoesWithHostPortOnly() -> None:
    """--cert with --listen would be ignored silently: it is refused, saying what to write."""
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="privateKey=KEY:certKey=CERT"):
        Options().parseOptions(
            ["--listen", "tcp:1", "--cert", "/etc/hostname", "--key", "/etc/hostname"]
        )
