"""
Native TLS (--cert/--key, and --listen ssl:...): a test CA and certificate
chains (ECDSA and RSA) made here, real twistd servers, curl --cacert and
treq against them; openssl s_client suite by suite: TLS 1.2 with Mozilla's
"intermediate" ECDHE suites and TLS 1.3 accepted, static RSA, CBC-SHA1,
DHE and old protocol versions refused; bad files stopping start-up with
one line.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
from attrs import frozen
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from morpheo.service._listen import makeListeners
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


@pytest.fixture(scope="module")
def rsaPKI(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return makePKI(tmp_path_factory.mktemp("pki-rsa"), "rsa")


def sslDescription(pki: TestPKI) -> str:
    return (
        f"ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.leaf}"
        f":extraCertChain={pki.intermediate}"
    )


@frozen
class Endpoint:
    port: int
    pki: TestPKI


def portOf(address: str) -> int:
    return int(address.rsplit(":", 1)[1].rstrip("/"))


@pytest.fixture(scope="module")
def endpoints(tlsServer, tmp_path_factory: pytest.TempPathFactory, pki: TestPKI, rsaPKI: TestPKI):
    """
    Each way to TLS with each kind of key: --cert/--key with the ECDSA
    chain (the module's server) and with the RSA one; two --listen ssl:
    endpoints of one server, ECDSA and RSA.
    """
    rsaServer = startServer(
        str(tmp_path_factory.mktemp("tls-rsa")),
        "--host", "127.0.0.1", "--port", "0", "--cert", str(rsaPKI.cert), "--key", str(rsaPKI.key),
    )  # fmt: skip
    try:
        listenServer = startServer(
            str(tmp_path_factory.mktemp("tls-listen")),
            "--listen", sslDescription(pki), "--listen", sslDescription(rsaPKI),
        )  # fmt: skip
    except BaseException:
        rsaServer.stop()
        raise
    try:
        ecListen, rsaListen = listenServer.addresses
        yield {
            "cert-ecdsa": Endpoint(portOf(tlsServer[1]), pki),
            "cert-rsa": Endpoint(portOf(rsaServer.addresses[0]), rsaPKI),
            "listen-ecdsa": Endpoint(portOf(ecListen), pki),
            "listen-rsa": Endpoint(portOf(rsaListen), rsaPKI),
        }
    finally:
        rsaServer.stop()
        listenServer.stop()


#: Mozilla's "intermediate" TLS 1.2 suites (its DHE ones aside), by the kind
#: of certificate key that can serve them.
INTERMEDIATE = {
    "ecdsa": [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
    "rsa": [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ],
}

#: Suites a key of that kind could serve, that must be refused: static RSA
#: key exchange (no forward secrecy), CBC with SHA-1, DHE (not offered).
REFUSED = {
    "ecdsa": ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"],
    "rsa": [
        "AES128-SHA",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
    ],
}

TLS13_SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]

WAYS = ["cert", "listen"]


def byKey(suites: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(endpoint, suite) for each way to TLS and each suite of its key."""
    return [(f"{way}-{key}", suite) for way in WAYS for key in suites for suite in suites[key]]


@frozen
class Handshake:
    protocol: str | None  # None: no handshake
    cipher: str | None
    output: str


def sClient(endpoint: Endpoint, *args: str) -> Handshake:
    """
    openssl s_client's handshake with C{endpoint}, verifying the chain
    against the test CA and the name: what was negotiated.
    """
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{endpoint.port}",
         "-servername", "localhost", "-verify_hostname", "localhost",
         "-CAfile", str(endpoint.pki.ca), "-verify_return_error", *args],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    output = done.stdout + done.stderr
    negotiated = re.search(r"^New, (TLSv[\d.]+), Cipher is (\S+)$", output, re.MULTILINE)
    if done.returncode != 0 or negotiated is None:
        return Handshake(None, None, output)
    return Handshake(negotiated.group(1), negotiated.group(2), output)


#: The server's alerts, as s_client reports them: proof that the refusal is
#: the server's, not a client that would not offer the suite or version.
HANDSHAKE_FAILURE = "SSL alert number 40"
PROTOCOL_VERSION = "SSL alert number 70"


@pytest.mark.parametrize("where, suite", byKey(INTERMEDIATE))
def test_intermediateSuitesAcceptedWithTLS12(endpoints, where: str, suite: str) -> None:
    done = sClient(endpoints[where], "-tls1_2", "-cipher", suite)
    assert (done.protocol, done.cipher) == ("TLSv1.2", suite), done.output


@pytest.mark.parametrize("where, suite", byKey(REFUSED))
def test_weakSuitesRefused(endpoints, where: str, suite: str) -> None:
    """
    Offered alone by a willing client (security level 0), each is refused
    by the server with a handshake failure alert.
    """
    done = sClient(endpoints[where], "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")
    assert done.protocol is None, done.output
    assert HANDSHAKE_FAILURE in done.output, done.output


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
@pytest.mark.parametrize("where", [f"{way}-{key}" for way in WAYS for key in INTERMEDIATE])
def test_oldVersionsRefused(endpoints, where: str, version: str) -> None:
    done = sClient(endpoints[where], version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert done.protocol is None, done.output
    assert PROTOCOL_VERSION in done.output, done.output


@pytest.mark.parametrize("suite", TLS13_SUITES)
@pytest.mark.parametrize("where", [f"{way}-{key}" for way in WAYS for key in INTERMEDIATE])
def test_tls13Accepted(endpoints, where: str, suite: str) -> None:
    done = sClient(endpoints[where], "-tls1_3", "-ciphersuites", suite)
    assert (done.protocol, done.cipher) == ("TLSv1.3", suite), done.output


def tls12Suites(context: SSL.Context) -> set[str]:
    """The TLS 1.2 suites a context offers (TLS 1.3's are listed too: left out)."""
    return {c for c in SSL.Connection(context, None).get_cipher_list() if not c.startswith("TLS_")}


def test_bothWaysToTLSHaveTheSameSuites(pki: TestPKI, rsaPKI: TestPKI) -> None:
    """
    The context of --cert/--key and those of ssl: endpoints (ECDSA, RSA,
    given DH parameters or not) offer exactly the intermediate suites.
    """
    expected = {suite for suites in INTERMEDIATE.values() for suite in suites}
    assert tls12Suites(loadCertificateOptions(str(pki.cert), str(pki.key)).getContext()) == expected
    dh = pki.ca.parent / "dh.pem"
    subprocess.run(
        ["openssl", "dhparam", "-dsaparam", "-out", str(dh), "2048"],
        capture_output=True,
        check=True,
    )
    descriptions = (
        sslDescription(pki),
        sslDescription(rsaPKI),
        f"{sslDescription(rsaPKI)}:dhParameters={dh}",
    )
    listeners = makeListeners(
        reactor, listen=descriptions, host="127.0.0.1", port=0, cert=None, key=None
    )
    for listener in listeners:
        assert listener.tls
        context = listener.endpoint._sslContextFactory.getContext()  # type: ignore[attr-defined]
        assert tls12Suites(context) == expected


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
