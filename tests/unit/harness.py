"""
The service's web layer in memory, for the unit tier: the real routes and
the real L{StreamingSite} (with its access log) over the in-memory
metadata and blob stores, reached by a real HTTP client (treq's, on
twisted.web's Agent) through L{twisted.test.iosim}'s in-memory
transports.  No socket, no process, no database, no thread: time is a
L{MemoryReactorClock}, and the thread pool the domain layer hashes in runs
its work at once (in this tier every request is small, and a
deterministic order makes failures repeatable).  Every answer that client
gets is held to the OpenAPI document (L{tests.apidoc}): a route, status,
header or body it does not describe fails the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid as _uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

from attrs import define, field, frozen
from treq.client import HTTPClient
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IPushProducer, IReactorFromThreads
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from twisted.web.server import Site
from zope.interface import implementer

from morpheo._errors import BlobStoreError
from morpheo._interfaces import IBlobSource, IBlobWriter, IRedirectableBlobStore
from morpheo._kinds import TABLE
from morpheo._metrics import Metrics
from morpheo._types import StoredObject
from morpheo.blobstores import MemoryBlobStore, MemoryBudget
from morpheo.blobstores._bodies import BytesBody
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import (
    CLAIM_LEASE,
    MAX_OPEN_UPLOADS,
    UPLOAD_EXPIRY,
    BlobCache,
    IncomingBlob,
    NewObject,
    Objects,
    RecordCache,
    Resumable,
)
from morpheo.service._graceful import HandlerTracker, trackedResource
from morpheo.web import AccessLogSite, BasicAuth, CORSResource, StorageAPI, StreamingSite
from morpheo.web._root import StorageRoot
from morpheo.web._streaming import HEADER_TIMEOUT, MIN_BODY_RATE, RATE_WINDOW
from morpheo.web._throttle import LoginThrottle
from tests.apidoc import checkAnswer, flatHeaders

T = TypeVar("T")

USER = "tester"
PASSWORD = "s3cret-pass"
BOUNDARY = "morpheo-unit-boundary"
#: Every kind uploaded as a form, and the text fields its form requires.
FORM_KINDS = [k.name for k in TABLE.values() if not k.rawBody]


@contextmanager
def capturedLog() -> Iterator[list[LogEvent]]:
    """Every log event published meanwhile (access lines, failures...)."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def errors(events: list[LogEvent]) -> list[LogEvent]:
    """The events that are errors: a failure, or an error or critical level."""
    return [
        e
        for e in events
        if e.get("log_failure") is not None
        or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


@implementer(IReactorFromThreads)
class FakeReactor(MemoryReactorClock):
    """A memory reactor whose threads hand their results back at once."""

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        callable(*args, **kwargs)


class ImmediatePool:
    """A thread pool stand-in that runs its work in the calling thread."""

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


@implementer(IPushProducer)
class ServerTransport(iosim.FakeTransport):
    """
    iosim's transport for the site's side, with habits of a real one
    (C{twisted.internet.abstract.FileDescriptor}) that iosim's lacks: it
    takes the channel for its producer, pauses it while more than
    C{bufferSize} bytes wait to be sent (so a response streams: a download
    can be cut mid-body), and stops it when the connection goes, before
    the protocol hears of it.  (Pausing it does not pause reading.)
    """

    bufferSize = 64 * 1024
    _producerPaused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if (
            self.producer is not None
            and self.streamingProducer
            and not self._producerPaused
            and sum(map(len, self.stream)) > self.bufferSize
        ):
            self._producerPaused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> bytes:
        data: bytes = super().getOutBuffer()
        if self._producerPaused:
            self._producerPaused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data

    def reportDisconnect(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        super().reportDisconnect()


@implementer(IAgent)
class _MemoryAgent:
    """
    An agent whose connections are in-memory pairs of transports to the
    site, as treq's C{RequestTraversalAgent} makes them, but to a
    L{StreamingSite}: a plain Site would read bodies whole.
    """

    def __init__(self, reactor: FakeReactor, site: StreamingSite) -> None:
        self._reactor = reactor
        self._site = site
        self._agent = Agent(reactor)
        self.pumps: list[iosim.IOPump] = []
        #: The address the next connections come from.
        self.peer = "127.0.0.1"

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        d = self._agent.request(method, uri, headers, bodyProducer)
        host, port, factory, _, _ = self._reactor.tcpClients.pop()
        server = IPv4Address("TCP", "127.0.0.1", port)
        client = IPv4Address("TCP", self.peer, 31337)
        serverProtocol = self._site.buildProtocol(client)
        clientProtocol = factory.buildProtocol(None)
        self.pumps.append(
            iosim.connect(
                serverProtocol,
                ServerTransport(serverProtocol, True, server, client),
                clientProtocol,
                iosim.FakeTransport(clientProtocol, False, client, server),
                greet=False,
            )
        )
        return d


class _Received(Protocol):
    """The client side of a L{Connection}: every byte the server sent."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True


class Connection:
    """
    A connection to the site kept open: exact bytes sent as the test wants
    them, in pieces, and what the server answered; for what the wire shows
    (100 Continue, keep-alive after an early answer, a lingering close).
    """

    def __init__(self, service: Service) -> None:
        self._service = service
        self._client = _Received()
        self._pump = service._connect(self._client)

    def send(self, data: bytes) -> bytes:
        """Send C{data}, run what it starts; what the server sent since."""
        start = len(self._client.data)
        self._pump.clientIO.write(data)
        self._service.settle()
        return self._client.data[start:]

    def sendAndReceive(self, data: bytes, count: int, limit: int = 10_000) -> bytes:
        """
        Send C{data}, then move bytes and run timers only until the server
        has sent C{count} bytes or more (a response still going): those.
        """
        start = len(self._client.data)
        self._pump.clientIO.write(data)
        for _ in range(limit):
            if len(self._client.data) - start >= count:
                return self._client.data[start:]
            self._pump.pump()
            self._service.reactor.advance(0)
        raise AssertionError(f"the server sent {len(self._client.data) - start} bytes")

    @property
    def received(self) -> bytes:
        return self._client.data

    @property
    def closed(self) -> bool:
        return self._client.closed

    def close(self) -> None:
        """The client goes away (once what is in flight has arrived)."""
        self._pump.clientIO.loseConnection()
        self._service.settle()

    def abort(self) -> None:
        """
        The client goes away at once, as a socket closed with bytes still
        coming (a reset): what the server had not sent yet is lost.
        """
        pump = self._pump
        for io in (pump.clientIO, pump.serverIO):
            io.disconnecting = io.disconnected = True
            io.stream = []
        pump.serverIO.reportDisconnect()
        pump.clientIO.reportDisconnect()
        self._service.settle()


@frozen
class Reply:
    """An answer as the client got it."""

    code: int
    headers: Headers
    body: bytes
    #: The Content-Length the answer was framed with (twisted.web's client
    #: keeps it apart from the headers), L{None} without one.
    length: int | None = None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        assert self.header("content-type") == "application/json", self.body[:200]
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The sentence of a JSON error answer."""
        document = self.json()
        assert set(document) == {"error"}, document
        message: str = document["error"]
        return message


def form(fields: Mapping[str, str], blob: bytes | None = None, **part: str) -> bytes:
    """
    A multipart/form-data body: the text fields in their order, then the
    blob (named C{blob}, with C{part}'s headers: C{filename}, C{type}, or
    any other header by its name).
    """
    out = []
    for name, value in fields.items():
        out.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    if blob is not None:
        filename = part.pop("filename", "blob.bin")
        ctype = part.pop("type", "application/octet-stream")
        extra = "".join(f"{k}: {v}\r\n" for k, v in part.items())
        out.append(
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="blob";'
                f' filename="{filename}"\r\nContent-Type: {ctype}\r\n{extra}\r\n'
            ).encode()
            + blob
            + b"\r\n"
        )
    return b"".join(out) + f"--{BOUNDARY}--\r\n".encode()


FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
END = f"--{BOUNDARY}--\r\n".encode()


def basic(user: str = USER, password: str = PASSWORD) -> str:
    """An C{Authorization} header's value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    length: int | None = None,
) -> bytes:
    """
    A request as the wire carries it, with credentials and, unless the
    headers frame it otherwise, a C{Content-Length} of C{length} (the
    body's own by default, another to send it in pieces).
    """
    head = {"Host": "storage.test", "Authorization": basic(), **(headers or {})}
    if "Transfer-Encoding" not in head and (body or length is not None):
        head.setdefault("Content-Length", str(len(body) if length is None else length))
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"{method} {path} HTTP/1.1\r\n{lines}\r\n".encode() + body


def status(raw: bytes) -> int:
    """The status of the first response of C{raw} (100 Continue included)."""
    return statuses(raw)[0]


def statuses(raw: bytes) -> list[int]:
    """The status of every response of C{raw}."""
    found = [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]
    assert found, raw[:200]
    return found


def responseHeaders(raw: bytes) -> dict[str, str]:
    """The headers of the first response of C{raw}, by lower-case name."""
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v for k, _, v in (line.partition(": ") for line in head)}


def newUUID() -> str:
    return str(_uuid.uuid4())


def fieldsFor(kind: str, blob: bytes, **overrides: str) -> dict[str, str]:
    """The text fields a valid upload of C{kind} sends before C{blob}."""
    fields = {name: f"{name} of it" for name in TABLE[kind].text}
    fields["size"] = str(len(blob))
    fields.update(overrides)
    return fields


#: Where the redirecting store's URLs point.
STORE = "http://store.test"


@implementer(IRedirectableBlobStore)
class RedirectingBlobStore(MemoryBlobStore):
    """
    The in-memory store as a remote one that serves downloads itself: its
    URLs say what they were made for, as query parameters, for tests to
    read back.  With C{down}, it cannot make them either.
    """

    maxRedirectLifetime = 3600

    def presignedURL(
        self, key: str, lifetime: int, contentType: str, disposition: str
    ) -> Deferred[str]:
        if self.down:
            return fail(BlobStoreError("the mock blob store cannot sign"))
        query = urlencode({"lifetime": lifetime, "type": contentType, "disposition": disposition})
        return succeed(f"{STORE}/{key}?{query}")


@define
class Service:
    """
    The routes of one service, in memory, and what tests look inside.
    C{request} answers synchronously: it runs the exchange to its end.
    """

    reactor: FakeReactor = field(factory=FakeReactor)
    maxBlobSize: int | None = None
    claimLease: float = CLAIM_LEASE
    corsOrigins: tuple[str, ...] = ("*",)
    #: Redirect downloads to a L{RedirectingBlobStore}, with URLs of this lifetime.
    redirectLifetime: int | None = None
    #: Whether the blob store's writes open sessions (see L{MemoryBlobStore}).
    sessions: bool = False
    #: More users than the tests' own (password files), and the failed
    #: logins allowed per minute from one address (0: no limit).
    checkers: tuple[ICredentialsChecker, ...] = ()
    loginThrottle: int = 0
    #: The site's deadlines for slow clients.
    headerTimeout: float | None = HEADER_TIMEOUT
    minBodyRate: float = MIN_BODY_RATE
    rateWindow: float = RATE_WINDOW
    #: What the blob store's transfers share of memory.
    budget: MemoryBudget = field(factory=MemoryBudget)
    #: What the service counts in (its own registry).
    metrics: Metrics = field(factory=Metrics)
    #: Serve /metrics on the main site (else only through L{metricsSite}).
    metricsHere: bool = True
    #: The resumable uploads' expiry and per-user limit.
    uploadExpiry: float = UPLOAD_EXPIRY
    maxOpenUploads: int = MAX_OPEN_UPLOADS
    #: Whether the routes serve the resumable uploads (else they are a 501).
    resumable: bool = True
    #: Keep the records and small blobs read, as a node hearing the
    #: database's changes does (L{records}, L{blobCache}).
    cache: bool = False
    records: RecordCache | None = field(init=False, default=None)
    blobCache: BlobCache | None = field(init=False, default=None)
    metadata: MemoryMetadataStore = field(init=False)
    blobs: MemoryBlobStore = field(init=False)
    objects: Objects = field(init=False)
    uploads: Resumable = field(init=False)
    auth: BasicAuth = field(init=False)
    site: AccessLogSite = field(init=False)
    client: HTTPClient = field(init=False)
    _agent: _MemoryAgent = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.metadata = MemoryMetadataStore(self.reactor, owner="unit")
        redirecting = self.redirectLifetime is not None
        store = RedirectingBlobStore if redirecting else MemoryBlobStore
        self.blobs = store(self.reactor, sessions=self.sessions, budget=self.budget)
        if self.cache:
            self.records = RecordCache(self.reactor, metrics=self.metrics)
            self.records.listening()
            self.blobCache = BlobCache(1024 * 1024, metrics=self.metrics)
        self.objects = Objects(
            self.metadata,
            self.blobs,
            reactor=self.reactor,
            pool=ImmediatePool(),  # type: ignore[arg-type]
            maxBlobSize=self.maxBlobSize,
            claimLease=self.claimLease,
            records=self.records,
            blobCache=self.blobCache,
        )
        throttle = (
            LoginThrottle(self.reactor, self.loginThrottle, metrics=self.metrics)
            if self.loginThrottle
            else None
        )
        self.auth = BasicAuth(
            {USER: PASSWORD},
            checkers=self.checkers,
            clock=self.reactor,
            throttle=throttle,
            metrics=self.metrics,
        )
        self.uploads = Resumable(
            self.objects,
            reactor=self.reactor,
            pool=ImmediatePool(),  # type: ignore[arg-type]
            expiry=self.uploadExpiry,
            limit=self.maxOpenUploads,
            lease=self.claimLease,
        )
        api = StorageAPI(
            self.objects,
            self.auth,
            self.redirectLifetime,
            metrics=self.metrics,
            clock=self.reactor,
            metricsHere=self.metricsHere,
            pool=ImmediatePool(),  # type: ignore[arg-type]
            uploads=self.uploads if self.resumable else None,
        )
        root = StorageRoot(self.corsOrigins)
        routes = trackedResource(api.routedApp(), HandlerTracker())
        root.setInner(api.meter.resource(CORSResource(routes, self.corsOrigins)))
        self.site = AccessLogSite(
            root,
            reactor=self.reactor,
            headerTimeout=self.headerTimeout,
            minBodyRate=self.minBodyRate,
            rateWindow=self.rateWindow,
        )
        self._agent = _MemoryAgent(self.reactor, self.site)
        self.client = HTTPClient(self._agent)

    # Driving

    def run(self, work: Deferred[T] | Coroutine[Any, Any, T], limit: int = 10_000) -> T:
        """Pump the connections and the clock until C{work} is done."""
        d = ensureDeferred(work)
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        for _ in range(limit):
            if outcome:
                break
            self.flush()
        assert outcome, "the exchange did not end"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]  # type: ignore[no-any-return]

    def flush(self) -> None:
        for pump in list(self._agent.pumps):
            pump.flush()
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self._agent.pumps.remove(pump)
        self.reactor.advance(0)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = (USER, PASSWORD),
        peer: str = "127.0.0.1",
    ) -> Reply:
        """One request (from C{peer}'s address), answered in full."""
        return self.run(self.send(method, path, body, headers, auth, peer))

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = (USER, PASSWORD),
        peer: str = "127.0.0.1",
    ) -> Deferred[Reply]:
        """One request sent, its answer to come (see L{run} and L{flush})."""
        self._agent.peer = peer

        async def exchange() -> Reply:
            response = await self.client.request(
                method,
                f"http://storage.test{path}",
                headers=Headers({k: [v] for k, v in (headers or {}).items()}),
                data=BytesBody(body) if body is not None else None,
                auth=auth,
                allow_redirects=False,
            )
            content = await response.content()
            length = response.length if isinstance(response.length, int) else None
            reply = Reply(response.code, response.headers, content, length)
            checkAnswer(method, path, reply.code, flatHeaders(reply.headers), content)
            return reply

        return ensureDeferred(exchange())

    def settle(self, limit: int = 10_000) -> None:
        """Move bytes and run due timers until nothing is left to do now."""
        for _ in range(limit):
            moved = False
            for pump in list(self._agent.pumps):
                moved = pump.pump() or moved
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self._agent.pumps.remove(pump)
            now = self.reactor.seconds()
            if not moved and all(c.getTime() > now for c in self.reactor.getDelayedCalls()):
                return
            self.reactor.advance(0)
        raise AssertionError("the service kept busy: something loops")

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass on the clock, and run what they make due."""
        self.reactor.advance(seconds)
        self.settle()

    def _connect(self, client: Protocol) -> iosim.IOPump:
        peer = IPv4Address("TCP", "127.0.0.1", 31337)
        host = IPv4Address("TCP", "127.0.0.1", 80)
        server = self.site.buildProtocol(peer)
        pump: iosim.IOPump = iosim.connect(
            server,
            ServerTransport(server, True, host, peer),
            client,
            iosim.FakeTransport(client, False, peer, host),
            greet=False,
        )
        self._agent.pumps.append(pump)
        return pump

    def connect(self) -> Connection:
        """A connection kept open, for exact bytes sent in pieces."""
        return Connection(self)

    def startUpload(self, kind: str, uuid: str, blob: bytes = b"x" * 1000) -> Connection:
        """
        An upload of C{kind} cut short of its end, its connection left open:
        its uuid is claimed and part of its blob written.
        """
        body = form(fieldsFor(kind, blob, uuid=uuid), blob)
        connection = self.connect()
        connection.send(
            request("POST", f"/{kind}", {"Content-Type": FORM_TYPE}, body, length=len(body))[
                : -len(END) - 100
            ]
        )
        assert (kind, uuid, "pending") in self.rows()
        return connection

    def raw(self, data: bytes, site: Site | None = None) -> bytes:
        """
        Exact bytes in, exact bytes out: for what no client would send (to
        C{site}, by default the service's own).
        """
        return self.rawExchange(data, site)[0]

    def rawExchange(self, data: bytes, site: Site | None = None) -> tuple[bytes, bool]:
        """L{raw}, and whether the server then closed the connection."""
        site = self.site if site is None else site
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 31337))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        for _ in range(50):
            self.reactor.advance(0)
        answer: bytes = transport.value()
        return answer, bool(transport.disconnecting)

    # Uploads

    def upload(self, kind: str, blob: bytes | None = None, **fields: str) -> Reply:
        """A valid upload of C{kind} (fields may be overridden)."""
        blob = os.urandom(1000) if blob is None else blob
        if TABLE[kind].rawBody:
            query = "&".join(f"{k}={v}" for k, v in fields.items())
            return self.request("POST", f"/{kind}?{query}", blob)
        body = form(fieldsFor(kind, blob, **fields), blob)
        return self.request("POST", f"/{kind}", body, {"Content-Type": FORM_TYPE})

    def stored(self, kind: str, blob: bytes | None = None, **fields: str) -> dict[str, Any]:
        """Upload C{kind}, expecting a 201; its JSON."""
        reply = self.upload(kind, blob, **fields)
        assert reply.code == 201, reply.body
        document: dict[str, Any] = reply.json()
        return document

    def algo(self) -> str:
        """A stored algo's uuid (models need one)."""
        uuid: str = self.stored("algo", b"an algo")["uuid"]
        return uuid

    def otherNode(self) -> Objects:
        """Another node's lifecycle on this one's stores, keeping nothing."""
        return Objects(
            self.metadata,
            self.blobs,
            reactor=self.reactor,
            pool=ImmediatePool(),  # type: ignore[arg-type]
            claimLease=self.claimLease,
        )

    # Looking inside

    def rows(self) -> list[tuple[str, str, str]]:
        """Every row of the metadata store, ready or pending: (kind, uuid, state)."""
        return self.metadata.rows()

    def blobKeys(self) -> list[str]:
        return self.blobs.keys()

    def assertNothingLeft(self, before: tuple[list[Any], list[str]] | None = None) -> None:
        """No row and no blob besides those of C{before} (a L{snapshot})."""
        rows, keys = before if before is not None else ([], [])
        assert self.rows() == rows
        assert self.blobKeys() == keys

    def snapshot(self) -> tuple[list[Any], list[str]]:
        return self.rows(), self.blobKeys()


@implementer(IBlobSource)
@define
class Bytes:
    """A blob source that writes its bytes as soon as it is streamed."""

    data: bytes
    stopped: bool = False
    _done: Deferred[None] | None = field(default=None)

    def streamTo(self, writer: IBlobWriter) -> None:
        writer.write(self.data)
        self._done = succeed(None)

    def done(self) -> Deferred[None]:
        return self._done if self._done is not None else succeed(None)

    def stop(self) -> None:
        self.stopped = True


def put(
    service: Service, kind: str, data: bytes, through: Objects | None = None, **new: Any
) -> StoredObject:
    """Store C{data} through the service's lifecycle, or C{through} another's."""
    blob = new.pop("blob", IncomingBlob(len(data)))
    objects = service.objects if through is None else through
    return service.run(objects.put(NewObject(kind=kind, blob=blob, **new), Bytes(data)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@implementer(IBlobSource)
class Trickle:
    """
    An upload's body: C{first} written as soon as it is streamed, the rest
    when the test says (never, for the client of a node that is killed).
    """

    def __init__(self, first: bytes, rest: bytes = b"") -> None:
        self.first = first
        self.rest = rest
        self.writer: IBlobWriter | None = None
        self._done: Deferred[None] = Deferred()

    def streamTo(self, writer: IBlobWriter) -> None:
        self.writer = writer
        writer.write(self.first)
        if not self.rest:
            self._done.callback(None)

    def arrive(self) -> None:
        assert self.writer is not None
        self.writer.write(self.rest)
        self._done.callback(None)

    def done(self) -> Deferred[None]:
        return self._done

    def stop(self) -> None:
        pass
