"""
Native TLS (--cert/--key): a test CA and a certificate chain made here, a
real twistd server, curl --cacert and treq against it, old protocol
versions refused, and bad files stopping start-up with one line.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from morpheo.service._tls import TLSConfigError, loadCertificateOptions
from tests.integration.helpers import FORM_HEADERS, TestPKI, form, jsonOf, makePKI, uploadFields
from tests.integration.servers import PASSWORD, USER, startFails, startServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return makePKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tlsServer(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI):
    server = startServer(
        str(tmp_path_factory.mktemp("tls")),
        "--host", "127.0.0.1", "--port", "0", "--cert", str(pki.cert), "--key", str(pki.key),
    )  # fmt: skip
    [address] = server.addresses
    assert address.startswith("https://127.0.0.1:")
    yield server, address
    server.stop()


def trustingClient(pki: TestPKI) -> HTTPClient:
    """treq trusting only the test CA."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(pki.ca.read_bytes()))
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


def test_curlWithTheCA(tlsServer, pki: TestPKI) -> None:
    """curl verifies the chain (leaf + intermediate from --cert) against the CA alone."""
    _, address = tlsServer
    done = subprocess.run(
        ["curl", "-sS", "--fail", "--cacert", str(pki.ca), "-u", f"{USER}:{PASSWORD}",
         address + "data"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"items"' in done.stdout
    # Without the CA, curl refuses the certificate: it is really TLS with our chain.
    done = subprocess.run(
        ["curl", "-sS", address + "health"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0


@pytest_twisted.ensureDeferred
async def test_treqUploadAndDownloadOverTLS(tlsServer, pki: TestPKI) -> None:
    _, address = tlsServer
    http = trustingClient(pki)
    data = b"x" * 200_000
    r = await http.post(
        address + "data",
        data=form(*uploadFields("data", data)),
        headers=FORM_HEADERS,
        auth=(USER, PASSWORD),
    )
    assert r.code == 201, await treq.text_content(r)
    uuid = (await jsonOf(r))["uuid"]
    r = await http.get(f"{address}data/{uuid}/blob", auth=(USER, PASSWORD))
    assert r.code == 200
    assert await treq.content(r) == data


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_oldTLSRefused(tlsServer, pki: TestPKI, version: ssl.TLSVersion) -> None:
    """
    A client limited to TLS 1.0 or 1.1 (and willing: security level 0) fails
    its handshake; the same client allowed TLS 1.2 succeeds.
    """
    _, address = tlsServer
    port = int(address.rsplit(":", 1)[1].rstrip("/"))

    def handshake(maximum: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(pki.ca))
        context.set_ciphers("ALL:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return str(tls.version())

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(version)
    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_contextRefusesOldVersions(pki: TestPKI) -> None:
    """The context itself says no to TLS 1.0 and 1.1, whatever OpenSSL's defaults."""
    context = loadCertificateOptions(str(pki.cert), str(pki.key)).getContext()
    options = context.set_options(0)
    assert options & SSL.OP_NO_TLSv1
    assert options & SSL.OP_NO_TLSv1_1


@pytest.mark.parametrize(
    "case, words",
    [
        ("mismatch", ["does not match"]),
        ("not-pem", ["holds no PEM certificate"]),
        ("bad-key", ["holds no usable PEM private key"]),
    ],
)
def test_badFilesStopStartUpWithOneLine(
    tmp_path: Path, pki: TestPKI, case: str, words: list[str]
) -> None:
    """
    A mismatched key, a certificate file that is not PEM, a key file that
    holds no key: the process exits non-zero with one line saying which.
    """
    cert, key = pki.cert, pki.key
    if case == "mismatch":
        key = pki.otherKey
    elif case == "not-pem":
        cert = tmp_path / "junk.pem"
        cert.write_text("not a certificate\n")
    else:
        key = tmp_path / "junk-key.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    line = startFails(str(tmp_path / "data"), "--cert", str(cert), "--key", str(key))
    for word in words:
        assert word in line


def test_loadErrorsAreOneSentence(tmp_path: Path, pki: TestPKI) -> None:
    with pytest.raises(TLSConfigError, match="cannot read the TLS certificate"):
        loadCertificateOptions(str(tmp_path / "missing.pem"), str(pki.key))
    encrypted = tmp_path / "encrypted.pem"
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(TLSConfigError, match="encrypted"):
        loadCertificateOptions(str(pki.cert), str(encrypted))
