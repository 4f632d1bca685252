"""
Blobs whose size is known only at their end (a chunked request body, as the
original's Go client sends an empty model): a chunked model is stored, an
empty one too, the maximum blob size holds while it streams; and the remote
stores' writers cut such a blob as their stores want it, checked on the
requests they send (S3: one PUT within the first part, else a multipart
upload of whole parts and a smaller last one; GCS: whole chunks with
C{bytes a-b/*}, the last one with the total), buffering at most one part.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.credentials import Credentials
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from morpheo._errors import TooLarge
from morpheo.blobstores import MemoryBlobStore
from morpheo.blobstores._gcs import GCSBlobStore
from morpheo.blobstores._s3 import MAX_PARTS, MIN_PART, S3BlobStore
from morpheo.blobstores._writer import CappedWriter

from .harness import FakeReactor, ImmediatePool, Service, basic, responseHeaders, sha256, status

KiB = 1024
MiB = 1024 * KiB


def chunked(data: bytes, size: int = 700) -> bytes:
    """C{data} as a chunked body of C{size}-byte chunks."""
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def postChunked(service: Service, path: str, data: bytes, **headers: str) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: storage.test\r\nAuthorization: {basic()}\r\n"
        f"Transfer-Encoding: chunked\r\n{lines}\r\n"
    ).encode()
    return service.connect().send(head + chunked(data))


def body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


# The routes


@pytest.mark.parametrize("size", [0, 1, 700, 5000])
def test_aChunkedModelIsStoredWithItsSizeAndDigest(service: Service, size: int) -> None:
    algo = service.algo()
    blob = os.urandom(size)
    answer = postChunked(service, f"/model?algo={algo}", blob)
    assert status(answer) == 201
    stored = json.loads(body(answer))
    assert (stored["size"], stored["sha256"]) == (size, sha256(blob))
    assert service.request("GET", f"/model/{stored['uuid']}/blob").body == blob


def test_anEmptyChunkedBodyIsAnEmptyModel(service: Service) -> None:
    """What the original's Go client sends for an empty model file."""
    algo = service.algo()
    head = (
        f"POST /model?algo={algo} HTTP/1.1\r\nHost: storage.test\r\n"
        f"Authorization: {basic()}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    answer = service.connect().send(head + b"0\r\n\r\n")
    assert status(answer) == 201
    assert b'"size": 0' in answer and sha256(b"").encode() in answer


@pytest.mark.parametrize("size", [999, 1000])
def test_aChunkedModelUpToTheMaximumIsStored(size: int) -> None:
    service = Service(maxBlobSize=1000)
    answer = postChunked(service, f"/model?algo={service.algo()}", os.urandom(size))
    assert status(answer) == 201


@pytest.mark.parametrize("size", [1001, 50_000])
def test_aChunkedModelOverTheMaximumIs413AndLeavesNothing(size: int) -> None:
    service = Service(maxBlobSize=1000)
    algo = service.algo()
    before = service.snapshot()
    answer = postChunked(service, f"/model?algo={algo}", os.urandom(size))
    assert status(answer) == 413
    assert b"the blob is larger than the maximum of 1000 bytes" in answer
    service.advance(60)
    service.assertNothingLeft(before)


def test_aChunkedModelIsCheckedAgainstItsStatedDigest(service: Service) -> None:
    algo = service.algo()
    before = service.snapshot()
    blob = os.urandom(3000)
    md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    answer = postChunked(service, f"/model?algo={algo}", blob, **{"Content-MD5": md5})
    assert status(answer) == 400
    assert b"does not match its stated Content-MD5" in answer
    service.assertNothingLeft(before)


def test_aChunkedModelCutShortLeavesNothing(service: Service) -> None:
    algo = service.algo()
    before = service.snapshot()
    connection = service.connect()
    head = (
        f"POST /model?algo={algo} HTTP/1.1\r\nHost: storage.test\r\n"
        f"Authorization: {basic()}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    connection.send(head + chunked(os.urandom(3000))[:-5])
    assert any(state == "pending" for _, _, state in service.rows())
    connection.close()
    service.assertNothingLeft(before)


def test_aChunkedModelIsAnswered201WithoutAContinueRefusal(service: Service) -> None:
    """No 411 any more, also for a client waiting for 100 Continue."""
    algo = service.algo()
    connection = service.connect()
    head = (
        f"POST /model?algo={algo} HTTP/1.1\r\nHost: storage.test\r\nAuthorization: {basic()}\r\n"
        "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    assert connection.send(head) == b"HTTP/1.1 100 Continue\r\n\r\n"
    answer = connection.send(chunked(b"abc"))
    assert status(answer) == 201
    assert "connection" not in responseHeaders(answer)


# The writers


def test_aWriterOfUnknownSizeTakesUpToItsMaximum() -> None:
    store = MemoryBlobStore(FakeReactor())
    writer = store.writer("k", None)
    writer.maximum = 10
    writer.write(b"x" * 10)
    with pytest.raises(TooLarge):
        writer.write(b"x")


def test_theCappedWriterRefusesTheByteBeyondItsLimit() -> None:
    reactor = FakeReactor()
    store = MemoryBlobStore(reactor)
    writer = CappedWriter(store.writer("k", None), 5)
    writer.write(b"abc")
    with pytest.raises(TooLarge) as caught:
        writer.write(b"def")
    assert caught.value.limit == 5
    writer.write(b"de")
    infos: list[Any] = []
    writer.finish().addCallback(infos.append)
    reactor.advance(0)
    assert [info.size for info in infos] == [5] and store._blobs["k"] == b"abcde"


class _Collect:
    """A request's body, as the store would receive it."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _Answer:
    """A store's answer, read by the writer as an IResponse."""

    def __init__(self, code: int, headers: dict[str, str], content: bytes) -> None:
        self.code = code
        self.phrase = b"OK"
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers({k: [v] for k, v in headers.items()})
        self.length = len(content)
        self._content = content

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(StringTransport())
        if self._content:
            protocol.dataReceived(self._content)
        protocol.connectionLost(Failure(ResponseDone()))


Answerer = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


@implementer(IAgent)
class _StoreAgent:
    """Plays a remote store: records each request, answers as told; a
    request's body is taken only while C{taking}."""

    def __init__(self, answer: Answerer) -> None:
        self._answer = answer
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.taking = True
        self._waiting: list[tuple[IBodyProducer, _Collect, Deferred[Any]]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[Any]:
        sink = _Collect()
        raw = {
            k.decode().lower(): v[0].decode() for k, v in (headers or Headers()).getAllRawHeaders()
        }

        def respond(_: object) -> Any:
            record = (method.decode(), uri.decode(), raw, sink.data)
            self.requests.append(record)
            return _Answer(*self._answer(*record))

        if bodyProducer is None:
            return succeed(None).addCallback(respond)
        result: Deferred[Any] = Deferred()
        if self.taking:
            bodyProducer.startProducing(sink).addCallback(respond).chainDeferred(result)
        else:
            self._waiting.append((bodyProducer, sink, result))
        return result


def _s3Answer(
    method: str, url: str, headers: dict[str, str], content: bytes
) -> tuple[int, dict[str, str], bytes]:
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    if method == "POST" and "uploads" in query:
        return (
            200,
            {},
            b"<InitiateMultipartUploadResult><UploadId>U1</UploadId></InitiateMultipartUploadResult>",
        )
    if method == "PUT" and "partNumber" in query:
        return 200, {"ETag": f'"e{query["partNumber"][0]}"'}, b""
    if method == "POST":
        return 200, {}, b"<CompleteMultipartUploadResult/>"
    return 200, {}, b""


def _gcsAnswer(
    method: str, url: str, headers: dict[str, str], content: bytes
) -> tuple[int, dict[str, str], bytes]:
    if method == "POST":
        return 200, {"Location": "http://gcs.test/session/1"}, b""
    contentRange = headers["content-range"]
    m = re.fullmatch(r"bytes (?:\d+-(\d+)|\*)/(\d+|\*)", contentRange)
    assert m is not None, contentRange
    end, total = m.groups()
    if total == "*" or (end is not None and int(end) + 1 < int(total)):
        return 308, {"Range": f"bytes=0-{end}"}, b""
    return 200, {}, b"{}"


def _s3(agent: _StoreAgent, reactor: FakeReactor) -> S3BlobStore:
    return S3BlobStore(
        "bucket",
        "us-east-1",
        reactor,
        ImmediatePool(),  # type: ignore[arg-type]
        endpoint="http://s3.test",
        agent=agent,
        credentials=Credentials("key", "secret"),
        partThreshold=MIN_PART,
        partSize=MIN_PART,
    )


def _gcs(agent: _StoreAgent, reactor: FakeReactor) -> GCSBlobStore:
    return GCSBlobStore(
        "bucket",
        reactor,
        ImmediatePool(),  # type: ignore[arg-type]
        endpoint="http://gcs.test",
        agent=agent,
        credentials=_Anonymous(),
        chunkSize=256 * KiB,
    )


class _Anonymous:
    valid = True

    def apply(self, headers: dict[str, str]) -> None:
        pass


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def _write(writer: Any, reactor: FakeReactor, data: bytes, chunk: int = 64 * KiB) -> Any:
    """Write C{data} in chunks, finish, and give the outcome."""
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
        reactor.advance(0)
    d = writer.finish()
    for _ in range(10):
        reactor.advance(0)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the writer did not finish"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def _summary(requests: list[tuple[str, str, dict[str, str], bytes]]) -> list[tuple[str, str, int]]:
    """Each request as (method, query, length of the blob's bytes it carries)."""
    out = []
    for method, url, _, content in requests:
        query = urlsplit(url).query
        out.append((method, query, len(content) if method == "PUT" else 0))
    return out


P = MIN_PART


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, [("PUT", "", 0)]),
        (1000, [("PUT", "", 1000)]),
        (P, [("PUT", "", P)]),
        (
            P + 1,
            [
                ("POST", "uploads", 0),
                ("PUT", "partNumber=1&uploadId=U1", P),
                ("PUT", "partNumber=2&uploadId=U1", 1),
                ("POST", "uploadId=U1", 0),
            ],
        ),
        (
            2 * P + 7,
            [
                ("POST", "uploads", 0),
                ("PUT", "partNumber=1&uploadId=U1", P),
                ("PUT", "partNumber=2&uploadId=U1", P),
                ("PUT", "partNumber=3&uploadId=U1", 7),
                ("POST", "uploadId=U1", 0),
            ],
        ),
    ],
    ids=["empty", "small", "one whole part", "a part and a byte", "two parts and a bit"],
)
def test_s3CutsABlobOfUnknownSizeIntoWholeParts(
    size: int, expected: list[tuple[str, str, int]]
) -> None:
    reactor = FakeReactor()
    agent = _StoreAgent(_s3Answer)
    data = os.urandom(size)
    writer = _s3(agent, reactor).writer("model/x", None)
    info = _write(writer, reactor, data)
    assert (info.size, info.sha256) == (size, sha256(data))
    assert _summary(agent.requests) == expected
    assert b"".join(c for m, u, h, c in agent.requests if m == "PUT") == data


def test_s3SendsNothingBeforeAPartIsWholeAndOneByteMore() -> None:
    reactor = FakeReactor()
    agent = _StoreAgent(_s3Answer)
    writer = _s3(agent, reactor).writer("model/x", None)
    writer.write(os.urandom(P))
    reactor.advance(0)
    assert agent.requests == []
    writer.write(b"!")
    reactor.advance(0)
    assert _summary(agent.requests)[:2] == [
        ("POST", "uploads", 0),
        ("PUT", "partNumber=1&uploadId=U1", P),
    ]


def test_s3OfUnknownSizeTakesAtMost10000Parts() -> None:
    store = _s3(_StoreAgent(_s3Answer), FakeReactor())
    assert store.writer("k", None).maximum == MAX_PARTS * P
    assert store.writer("k", 10).maximum is None


C = 256 * KiB


@pytest.mark.parametrize(
    ("size", "ranges"),
    [
        (0, ["bytes */0"]),
        (1000, ["bytes 0-999/1000"]),
        (C, [f"bytes 0-{C - 1}/{C}"]),
        (C + 1, [f"bytes 0-{C - 1}/*", f"bytes {C}-{C}/{C + 1}"]),
        (
            3 * C,
            [
                f"bytes 0-{C - 1}/*",
                f"bytes {C}-{2 * C - 1}/*",
                f"bytes {2 * C}-{3 * C - 1}/{3 * C}",
            ],
        ),
    ],
    ids=["empty", "small", "one whole chunk", "a chunk and a byte", "three whole chunks"],
)
def test_gcsSendsWholeChunksThenTheSizeWithTheLast(size: int, ranges: list[str]) -> None:
    reactor = FakeReactor()
    agent = _StoreAgent(_gcsAnswer)
    data = os.urandom(size)
    writer = _gcs(agent, reactor).writer("model/x", None)
    info = _write(writer, reactor, data)
    assert (info.size, info.sha256) == (size, sha256(data))
    [start, *puts] = agent.requests
    assert start[0] == "POST" and "x-upload-content-length" not in start[2]
    assert [h["content-range"] for _, _, h, _ in puts] == ranges
    assert b"".join(c for _, _, _, c in puts) == data


def test_gcsOfKnownSizeStillSaysItInEveryChunk() -> None:
    reactor = FakeReactor()
    agent = _StoreAgent(_gcsAnswer)
    data = os.urandom(C + 1)
    _write(_gcs(agent, reactor).writer("model/x", len(data)), reactor, data)
    [start, *puts] = agent.requests
    assert start[2]["x-upload-content-length"] == str(C + 1)
    assert [h["content-range"] for _, _, h, _ in puts] == [
        f"bytes 0-{C - 1}/{C + 1}",
        f"bytes {C}-{C}/{C + 1}",
    ]


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_aBlobOfUnknownSizeBuffersAtMostOnePart(store: str) -> None:
    """The store takes nothing: the body is paused once a part and the usual
    buffer are held, and no more arrives."""
    reactor = FakeReactor()
    agent = _StoreAgent(_s3Answer if store == "s3" else _gcsAnswer)
    agent.taking = False
    blobs = _s3(agent, reactor) if store == "s3" else _gcs(agent, reactor)
    step = P if store == "s3" else C
    writer = blobs.writer("model/x", None)
    producer = _Producer()
    writer.registerProducer(producer, True)
    chunk = 64 * KiB
    written = 0
    while not producer.paused and written < 10 * step + 64 * MiB:
        writer.write(os.urandom(chunk))
        written += chunk
        reactor.advance(0)
    assert producer.paused
    high = 4 * MiB  # the writers' usual high water mark
    assert step < written <= step + high + chunk


def test_aBlobOfUnknownSizeKeepsAWholePartWhateverItsShare() -> None:
    """
    With the store's memory budget shared among many transfers (each down
    to its least share), a blob of unknown size is still not paused before
    a whole part and a byte more are in: its part must wait whole, or it
    would never be sent.
    """
    reactor = FakeReactor()
    agent = _StoreAgent(_s3Answer)
    blobs = _s3(agent, reactor)
    others = [blobs.budget.join() for _ in range(1000)]
    writer = blobs.writer("model/x", None)
    producer = _Producer()
    writer.registerProducer(producer, True)
    for _ in range(P // (64 * KiB)):
        writer.write(os.urandom(64 * KiB))
        reactor.advance(0)
        assert not producer.paused
    writer.write(b"!")
    reactor.advance(0)
    assert _summary(agent.requests)[:2] == [
        ("POST", "uploads", 0),
        ("PUT", "partNumber=1&uploadId=U1", P),
    ]
    assert blobs.budget.active == len(others) + 1
