"""
The helpers of the integration tier, one name per contract: requests
(multipart bodies built byte for byte, so that tests can also build wrong
ones; raw sockets; curl), what a response must be (L{assertError}), waiting
for what is observable (L{eventually}), a throwaway certificate
authority for TLS and a made-up Google service account.  The processes themselves are started in
L{tests.integration.servers}.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import inspect
import ipaddress
import json
import os
import socket
import subprocess
import time
import uuid as _uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from threading import Barrier
from typing import Any, TypeVar

import treq
from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import UNKNOWN_LENGTH, Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from morpheo.blobstores._bodies import Unpausable
from tests.integration.servers import Server

#: The checkout: README.md, schema/, setup.py.
ROOT = Path(__file__).resolve().parent.parent.parent
BOUNDARY = "morpheo-test-boundary-7f3a"
T = TypeVar("T")
FORM_HEADERS: dict[bytes | str, list[bytes | str]] = {
    b"Content-Type": [f"multipart/form-data; boundary={BOUNDARY}".encode()]
}


def newUUID() -> str:
    return str(_uuid.uuid4())


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def within(d: Deferred[Any], seconds: float = 120) -> Any:
    """C{d}'s result, or a timeout error after C{seconds}."""
    return await d.addTimeout(seconds, reactor)


async def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    """
    Poll C{check} until it passes (does not raise C{AssertionError}): what
    the server does asynchronously, seen from outside.  A coroutine
    function is awaited; anything else runs in a thread, since it may block
    (SQL, a bucket listing).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if inspect.iscoroutinefunction(check):
                await check()
            else:
                await deferToThread(check)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await sleep(0.1)


def form(*parts: tuple[str, str | bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """
    A multipart/form-data body with C{parts} in the order given; a part whose
    value is bytes is sent as a file.
    """
    out = b""
    for name, value in parts:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, bytes):
            out += (
                f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode() + value
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


def openForm(uuid: str, size: int) -> bytes:
    """The start of an upload's form, up to the first byte of a blob of C{size}."""
    return form(("uuid", uuid), ("size", str(size)), ("blob", b""), close=False)[:-2]


def formHead(length: int | str, *extra: str, path: str = "/data") -> str:
    """The head of a raw multipart POST (for L{rawRequest})."""
    return "\n".join(
        [
            f"POST {path} HTTP/1.1",
            "Host: x",
            *extra,
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
            f"Content-Length: {length}",
        ]
    )


def uploadFields(
    kind: str, data: bytes, uuid: str | None = None, **extra: str
) -> list[tuple[str, str | bytes]]:
    """The fields of a valid upload of C{kind}, blob last."""
    fields: list[tuple[str, str | bytes]] = []
    if uuid:
        fields.append(("uuid", uuid))
    if kind in ("algo", "problem"):
        fields.append(("name", extra.pop("name", f"a {kind}")))
    if kind == "problem":
        fields.append(("description", extra.pop("description", "great")))
    fields.extend(extra.items())
    fields.append(("size", str(len(data))))
    fields.append(("blob", data))
    return fields


async def jsonOf(response: IResponse) -> Any:
    return json.loads(await treq.content(response))


async def sendForm(
    http: HTTPClient,
    server: Server,
    path: str,
    body: bytes | IBodyProducer,
    method: str = "POST",
) -> IResponse:
    """The response to a multipart C{body} sent to C{path}, whatever it is."""
    return await http.request(
        method, f"{server.url}{path}", data=body, headers=FORM_HEADERS, auth=server.auth
    )


async def post(http: HTTPClient, server: Server, kind: str, data: bytes, **kw: str) -> IResponse:
    """The response to a form upload of C{kind}, whatever it is."""
    return await sendForm(http, server, f"/{kind}", form(*uploadFields(kind, data, **kw)))


async def upload(http: HTTPClient, server: Server, kind: str, data: bytes, **kw: str) -> Any:
    """A form upload of C{kind} that must succeed: its JSON."""
    r = await post(http, server, kind, data, **kw)
    assert r.code == 201, await treq.text_content(r)
    return await jsonOf(r)


async def newAlgo(http: HTTPClient, server: Server) -> str:
    """The uuid of a new algo."""
    return str((await upload(http, server, "algo", b"#!/bin/sh\n"))["uuid"])


async def renameAndReplace(
    http: HTTPClient, server: Server, old: str, new: str, data: bytes
) -> Any:
    """PATCH problem C{old} to uuid C{new}, name C{renamed} and blob C{data}: its JSON."""
    fields = (("uuid", new), ("name", "renamed"), ("size", str(len(data))), ("blob", data))
    r = await sendForm(http, server, f"/problem/{old}", form(*fields), "PATCH")
    assert r.code == 200, await treq.text_content(r)
    patched = await jsonOf(r)
    assert patched["uuid"] == new and patched["name"] == "renamed"
    assert patched["sha256"] == hashlib.sha256(data).hexdigest()
    return patched


async def download(http: HTTPClient, server: Server, path: str, **kw: Any) -> tuple[int, bytes]:
    r = await http.get(f"{server.url}{path}", auth=server.auth, **kw)
    return r.code, await treq.content(r)


async def assertError(response: IResponse, code: int | tuple[int, ...], *words: str) -> str:
    """A JSON error of status C{code} (or one of them) that says C{words}; its message."""
    codes = (code,) if isinstance(code, int) else code
    assert response.code in codes, await treq.text_content(response)
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    body = await jsonOf(response)
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body
    error: str = body["error"]
    return error


def assertClean(server: Server, filesBefore: list[str]) -> None:
    """A failed upload left nothing: no half row, no new or temporary file."""
    assert server.sql("SELECT kind, uuid FROM resource WHERE state <> 'ready'") == []
    assert server.files() == filesBefore


async def assertRefused(
    http: HTTPClient, server: Server, path: str, body: bytes, code: int, *words: str
) -> str:
    """
    The multipart C{body} sent to C{path} is refused with a JSON error
    C{code} saying C{words}, and leaves nothing behind (L{assertClean}).
    """
    before = server.files()
    r = await sendForm(http, server, path, body)
    error = await assertError(r, code, *words)
    assertClean(server, before)
    return error


def header(response: IResponse, name: str) -> str | None:
    """A response header's values, joined; Content-Length as the server sent it."""
    if name == "content-length":
        # Twisted's client takes Content-Length out of the headers.
        return str(response.length) if isinstance(response.length, int) else None
    values = response.headers.getRawHeaders(name.encode())
    return None if values is None else ", ".join(v.decode() for v in values)


async def raw(
    server: Server,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: IBodyProducer | None = None,
) -> tuple[IResponse, bytes]:
    """A request with a plain Agent: headers exactly as the server sent them."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    token = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    h = Headers({b"Authorization": [f"Basic {token}".encode()]})
    for k, v in (headers or {}).items():
        h.setRawHeaders(k.encode(), [v.encode()])
    response = await agent.request(method.encode(), (server.url + path).encode(), h, body)
    return response, await readBody(response)


def rawRequest(server: Server, head: str, body: bytes = b"", auth: bool = True) -> socket.socket:
    """Send a request head (and maybe part of a body) on a plain socket."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    lines = head.rstrip("\r\n").split("\n")
    if auth:
        token = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return s


def rawUpload(
    server: Server, uuid: str, size: int, sent: int, path: str = "/data"
) -> socket.socket:
    """
    A form upload of a blob of C{size} bytes (and a little more declared)
    on a plain socket, of which only C{sent} bytes of blob are sent: still
    in flight until the socket is closed.
    """
    prefix = openForm(uuid, size)
    head = formHead(len(prefix) + size + 100, path=path)
    return rawRequest(server, head, prefix + os.urandom(sent))


def readResponseHead(s: socket.socket) -> bytes:
    """What the socket receives up to the end of a response head (or its close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@implementer(IBodyProducer)
class ChunkedBody(Unpausable):
    """A body of unknown length, so treq sends it chunked, in pieces."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes, piece: int = 100_000) -> None:
        self.data = data
        self.piece = piece

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        for i in range(0, len(self.data), self.piece):
            consumer.write(self.data[i : i + self.piece])
        return succeed(None)


def curl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """curl, whatever it answers."""
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=timeout)


def curlOK(server: Server, *args: str) -> str:
    """curl as the server's user, which must succeed: what it printed."""
    done = curl("--fail", "-u", f"{server.user}:{server.password}", *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def bigRoundTrip(server: Server, path: str, sha: str, size: int) -> str:
    """
    Upload the file at C{path} with C{curl -F}, download it with curl, and
    check both sides' sha256 without holding it in memory; the uuid.
    """
    auth = f"{server.user}:{server.password}"
    uuid = newUUID()
    up = curl("-u", auth, "-F", f"uuid={uuid}", "-F", f"size={size}", "-F", f"blob=@{path}",
              f"{server.url}/data", timeout=600)  # fmt: skip
    assert f'"sha256": "{sha}"' in up.stdout, up
    digest = hashlib.sha256()
    received = 0
    command = ["curl", "-sS", "-D", "-", "-u", auth, f"{server.url}/data/{uuid}/blob"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as down:
        assert down.stdout is not None
        head = b""
        while b"\r\n\r\n" not in head:
            head += down.stdout.read(1)
        assert f"Content-Length: {size}".encode() in head
        while chunk := down.stdout.read(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == sha
    return uuid


# A throwaway certificate authority for the TLS tests: a root CA, an
# intermediate, and a server certificate for 127.0.0.1 and localhost (an
# ECDSA key by default, or RSA: each serves its own TLS 1.2 suites).


@frozen
class TestPKI:
    __test__ = False  # not a test class, for pytest

    ca: Path  # the root certificate (what clients trust)
    cert: Path  # server certificate, then the intermediate: a chain
    key: Path  # the server's key
    otherKey: Path  # a key that matches nothing
    leaf: Path  # the server certificate alone
    intermediate: Path  # the intermediate alone


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _keyPEM(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    key: CertificateIssuerPrivateKeyTypes,
    issuerName: x509.Name,
    issuerKey: CertificateIssuerPrivateKeyTypes,
    ca: bool,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuerKey, hashes.SHA256())


def _serverKey(keyType: str) -> CertificateIssuerPrivateKeyTypes:
    if keyType == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert keyType == "ec", keyType
    return ec.generate_private_key(ec.SECP256R1())


def makePKI(directory: Path, keyType: str = "ec") -> TestPKI:
    """A root, an intermediate and a server certificate of C{keyType} (ec or rsa)."""
    rootKey = ec.generate_private_key(ec.SECP256R1())
    root = _issue("Morpheo Test Root", rootKey, _name("Morpheo Test Root"), rootKey, ca=True)
    midKey = ec.generate_private_key(ec.SECP256R1())
    mid = _issue("Morpheo Test Intermediate", midKey, root.subject, rootKey, ca=True)
    serverKey = _serverKey(keyType)
    server = _issue(
        "127.0.0.1",
        serverKey,
        mid.subject,
        midKey,
        ca=False,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPKI(
        directory / "ca.pem",
        directory / "chain.pem",
        directory / "key.pem",
        directory / "other-key.pem",
        directory / "leaf.pem",
        directory / "intermediate.pem",
    )
    pki.leaf.write_bytes(_pem(server))
    pki.intermediate.write_bytes(_pem(mid))
    pki.ca.write_bytes(_pem(root))
    pki.cert.write_bytes(_pem(server) + _pem(mid))
    pki.key.write_bytes(_keyPEM(serverKey))
    pki.otherKey.write_bytes(_keyPEM(_serverKey(keyType)))
    return pki


def socketDSN(pgdata: str, dbname: str) -> str:
    """
    The DSN of the server running on C{pgdata}: its socket directory and port
    are lines 5 and 4 of C{postmaster.pid}.
    """
    with open(os.path.join(pgdata, "postmaster.pid")) as f:
        lines = f.read().splitlines()
    return f"host={lines[4]} port={lines[3]} user=postgres dbname={dbname}"


def serviceAccountFile(path: Path, tokenURL: str) -> Path:
    """
    A Google service account's key file, a key made now, whose token
    endpoint is C{tokenURL} (a L{tests.integration.servers.TokenServer}):
    what GOOGLE_APPLICATION_CREDENTIALS names on a real deployment.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "morpheo-test",
                "private_key_id": "key-1",
                "private_key": pem.decode(),
                "client_email": "storage@morpheo-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": tokenURL,
            }
        )
    )
    return path


# Many transfers at once, from threads: the load the memory bounds are for.

#: The block the load client sends and reads at a time.
LOAD_BLOCK = 1024 * 1024


def loadBlob(index: int, size: int, base: bytes) -> Iterator[bytes]:
    """
    Blob C{index}'s bytes, C{size} of them (a multiple of 1 MiB), made on
    the fly from C{base} (1 MiB that does not compress): every block of
    every blob differs, so a download that served another blob's bytes, or
    another block's, fails its digest.
    """
    for block in range(size // LOAD_BLOCK):
        shift = (index * 7919 + block * 104729) % LOAD_BLOCK
        yield base[shift:] + base[:shift]


class Load:
    """
    Form uploads of C{size} bytes each, C{count} at once (one thread and
    one connection each), then downloads of them, C{count} at once; the
    sha256 of every blob is computed as it is sent and checked against the
    server's answer, and again on every byte downloaded.  Blocking: for
    tests without a reactor and for the benchmarks.
    """

    def __init__(self, server: Server, count: int, size: int, timeout: float = 600) -> None:
        self.server = server
        self.count = count
        self.size = size
        self.timeout = timeout
        self._base = os.urandom(LOAD_BLOCK)
        credentials = f"{server.user}:{server.password}".encode()
        self._auth = "Basic " + base64.b64encode(credentials).decode()
        #: (uuid, sha256) of every blob uploaded.
        self.stored: list[tuple[str, str]] = []

    def uploads(self) -> float:
        """Upload C{count} blobs at once; the seconds it took."""
        stored, seconds = self._all(self._up, range(self.count))
        self.stored.extend(stored)
        return seconds

    def downloads(self) -> float:
        """Download every blob uploaded, all at once; the seconds it took."""
        return self._all(self._down, list(self.stored))[1]

    def mbps(self, seconds: float) -> float:
        return self.count * self.size / seconds / 1e6

    def _all(self, one: Callable[..., T], args: Sequence[Any]) -> tuple[list[T], float]:
        start = Barrier(len(args), timeout=self.timeout)

        def together(arg: Any) -> T:
            connection = self._connect()
            try:
                start.wait()
                return one(connection, arg)
            finally:
                connection.close()

        began = time.monotonic()
        with ThreadPoolExecutor(len(args)) as threads:
            results = list(threads.map(together, args))
        return results, time.monotonic() - began

    def _connect(self) -> HTTPConnection:
        return HTTPConnection("127.0.0.1", self.server.port, timeout=self.timeout)

    def _up(self, connection: HTTPConnection, index: int) -> tuple[str, str]:
        uuid = newUUID()
        head = openForm(uuid, self.size)
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        digest = hashlib.sha256()

        def body() -> Iterator[bytes]:
            yield head
            for block in loadBlob(index, self.size, self._base):
                digest.update(block)
                yield block
            yield tail

        headers = {
            "Authorization": self._auth,
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(head) + self.size + len(tail)),
        }
        connection.request("POST", "/data", body=body(), headers=headers)
        response = connection.getresponse()
        answer = response.read()
        assert response.status == 201, (response.status, answer[:300])
        assert json.loads(answer)["sha256"] == digest.hexdigest(), answer[:300]
        return uuid, digest.hexdigest()

    def _down(self, connection: HTTPConnection, stored: tuple[str, str]) -> None:
        uuid, sha = stored
        digest = hashlib.sha256()
        received = 0
        connection.request("GET", f"/data/{uuid}/blob", headers={"Authorization": self._auth})
        response = connection.getresponse()
        assert response.status == 200, (response.status, response.read()[:300])
        assert response.getheader("Content-Length") == str(self.size)
        while block := response.read(LOAD_BLOCK):
            digest.update(block)
            received += len(block)
        assert received == self.size, (uuid, received)
        assert digest.hexdigest() == sha, uuid
