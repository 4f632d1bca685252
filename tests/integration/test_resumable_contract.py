"""
One contract for every resumable blob store (L{IResumableBlobStore}), run
against each backend for real: the local disk, the in-memory mock, S3 (a
SeaweedFS started for the session) and Google Cloud Storage (a
fake-gcs-server started for the session).

Each request's bytes come from a producer that honours pauses and may stop
mid-way, as a cut connection does; what the store holds is read back
through the store itself, and what a write leaves (staged pieces, a
multipart upload) is listed in the bucket.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
import treq
from attrs import define, field
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IPushProducer,
    IReactorFromThreads,
)
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from morpheo._errors import BlobNotFound, BlobStoreError, SizeMismatch
from morpheo._interfaces import IAppender, IResumableBlobStore
from morpheo._types import Appended
from morpheo.blobstores._bodies import BytesBody
from morpheo.blobstores._gcs import GCSBlobStore
from morpheo.blobstores._local import UPLOAD_PREFIX, LocalBlobStore
from morpheo.blobstores._memory import MemoryBlobStore
from morpheo.blobstores._s3 import S3BlobStore
from tests.integration.helpers import within
from tests.integration.servers import FakeGCS, SeaweedFS, freePort

KiB = 1024
MiB = 1024 * KiB
#: The reactor as the local store sees it: what runs its threads' results.
threadedReactor = cast(IReactorFromThreads, reactor)


def newKey() -> str:
    return f"data/{uuid.uuid4()}-{os.urandom(6).hex()}"


@implementer(IPushProducer)
class Feed:
    """
    Plays one request's body: writes C{data} into an appender in
    C{chunk}s while not paused; with C{cutAt}, stops after that many bytes,
    as a connection cut mid-request does.
    """

    def __init__(
        self, appender: IConsumer, data: bytes, chunk: int = 64 * KiB, cutAt: int | None = None
    ) -> None:
        self.appender = appender
        self.data = memoryview(data)
        self.chunk = chunk
        self.stopAt = len(data) if cutAt is None else cutAt
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.done: Deferred[None] = Deferred()
        self._scheduled = False

    def start(self) -> Deferred[None]:
        self.appender.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if not self._scheduled and not self.paused and not self.done.called:
            self._scheduled = True
            reactor.callLater(0, self._step)

    def _step(self) -> None:
        self._scheduled = False
        for _ in range(8):
            if self.paused or self.done.called:
                return
            if self.sent >= self.stopAt:
                self.appender.unregisterProducer()
                self.done.callback(None)
                return
            block = bytes(self.data[self.sent : min(self.stopAt, self.sent + self.chunk)])
            self.sent += len(block)
            try:
                self.appender.write(block)
            except Exception as e:
                self.appender.unregisterProducer()
                self.done.errback(e)
                return
        self._schedule()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IConsumer)
class Sink:
    """Keeps what a download gives."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


@define
class Backend:
    """How to build one kind of resumable store for the tests, and look behind it."""

    name: str
    #: A store on the session's bucket; keyword arguments tune it.
    make: Callable[..., IResumableBlobStore]
    #: What the bucket holds for a key (its blob, staged pieces, uploads).
    leftovers: Callable[[str], list[str]]
    #: A store of the same kind elsewhere: another bucket, another endpoint.
    elsewhere: list[Callable[[], IResumableBlobStore]] = field(factory=list)
    #: The parts or chunks a test's blob crosses cheaply.
    tuned: dict[str, Any] = field(factory=dict)
    #: The unit the store sends in, when tuned.
    unit: int = 0


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=1, maxthreads=4, name="resumable-test")
    threads.start()
    yield threads
    threads.stop()


def _localLeftovers(store: LocalBlobStore, key: str) -> list[str]:
    """The blob and every resumable write's file beside it."""
    found = []
    directory = os.path.dirname(os.path.join(store.root, *key.split("/")))
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.startswith(UPLOAD_PREFIX):
            found.append(name)
        elif f"{os.path.basename(directory)}/{name}" == key:
            found.append(key)
    return found


@pytest.fixture(params=["local", "mock", "s3", "gcs"])
def backend(request: pytest.FixtureRequest, pool: ThreadPool, tmp_path: Any) -> Backend:
    if request.param == "local":
        # Its own directory for each test: every write's file is listed.
        local = LocalBlobStore(str(tmp_path / "blobs"), threadedReactor, pool)
        return Backend("local", lambda **kw: local, lambda key: _localLeftovers(local, key))
    if request.param == "mock":
        mock = MemoryBlobStore(reactor)

        def mockLeftovers(key: str) -> list[str]:
            return [k for k in mock.keys() if k == key] + list(mock.openWrites())

        return Backend(
            "mock", lambda **kw: mock, mockLeftovers, elsewhere=[lambda: MemoryBlobStore(reactor)]
        )
    if request.param == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")

        def s3(endpoint: str = server.endpoint, bucket: str = server.bucket, **kw: Any) -> Any:
            return S3BlobStore(
                bucket,
                server.region,
                reactor,
                pool,
                endpoint=endpoint,
                credentials=server.credentials,
                **kw,
            )

        other = f"other-{uuid.uuid4().hex[:12]}"

        def otherBucket() -> Any:
            server.createBucket(other)
            return s3(bucket=other)

        return Backend(
            "s3",
            s3,
            lambda key: server.objects(prefix=key) + [f"upload {k}" for k in server.uploads(key)],
            elsewhere=[otherBucket, lambda: s3(endpoint=f"http://127.0.0.1:{freePort()}")],
            tuned={"partSize": 5 * MiB},
            unit=5 * MiB,
        )
    gcs: FakeGCS = request.getfixturevalue("fakeGCS")

    def google(endpoint: str = gcs.endpoint, bucket: str = gcs.bucket, **kw: Any) -> Any:
        return GCSBlobStore(bucket, reactor, pool, endpoint=endpoint, **kw)

    otherGCS = f"other-{uuid.uuid4().hex[:12]}"

    def otherGCSBucket() -> Any:
        gcs.createBucket(otherGCS)
        return google(bucket=otherGCS)

    return Backend(
        "gcs",
        google,
        lambda key: gcs.objects(prefix=key),
        elsewhere=[otherGCSBucket, lambda: google(endpoint=f"http://127.0.0.1:{freePort()}")],
        tuned={"chunkSize": 256 * KiB},
        unit=256 * KiB,
    )


async def append(
    store: IResumableBlobStore,
    key: str,
    state: str,
    offset: int,
    data: bytes,
    end: int | None = None,
    revocable: bool = False,
    keep: bool = True,
    cutAt: int | None = None,
) -> tuple[Appended, Feed]:
    """One request's bytes appended (or C{cutAt} of them) and closed."""
    appender = store.append(key, state, offset, end, revocable)
    feed = Feed(appender, data, cutAt=cutAt)
    await within(feed.start())
    appended = await within(appender.close(keep))
    return appended, feed


async def read(store: IResumableBlobStore, key: str) -> bytes:
    sink = Sink()
    await within(store.produce(key, sink))
    return b"".join(sink.chunks)


async def concludeAndCheck(
    backend: Backend, store: IResumableBlobStore, key: str, state: str, data: bytes
) -> None:
    """Commit, read back, and find nothing but the blob left."""
    await within(store.conclude(key, state, len(data)))
    got = await read(store, key)
    assert len(got) == len(data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert backend.leftovers(key) == [key]
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_provides_the_interfaces(backend: Backend) -> None:
    store = backend.make()
    verifyObject(IResumableBlobStore, store)
    key = newKey()
    state = await within(store.begin(key, None))
    assert isinstance(state, str) and len(state) < 4096
    appender = store.append(key, state, 0)
    verifyObject(IAppender, appender)
    appended = await within(appender.close())
    assert appended.offset == 0
    await within(store.cancel(key, appended.state))


@pytest.mark.parametrize("size", [0, 1, 256 * KiB, 5 * MiB, 12 * MiB + 3])
@pytest_twisted.ensureDeferred
async def test_one_append_then_conclude(backend: Backend, size: int) -> None:
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(size)
    state = await within(store.begin(key, size))
    appended, _ = await append(store, key, state, 0, data, end=size)
    assert appended.offset == size
    with pytest.raises(BlobNotFound):
        await read(store, key)  # nothing visible before conclude
    await concludeAndCheck(backend, store, key, appended.state, data)


@pytest_twisted.ensureDeferred
async def test_conclude_asked_again_is_done(backend: Backend) -> None:
    """Its caller did not hear the first answer: the second finds the blob there."""
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(backend.unit + 1000)
    state = await within(store.begin(key, None))
    appended, _ = await append(store, key, state, 0, data)
    await within(store.conclude(key, appended.state, len(data)))
    await within(store.conclude(key, appended.state, len(data)))
    await concludeAndCheck(backend, store, key, appended.state, data)


@pytest.mark.parametrize("sized", [True, False], ids=["sized", "unsized"])
@pytest_twisted.ensureDeferred
async def test_many_small_appends(backend: Backend, sized: bool) -> None:
    """Requests under every part minimum, in an order that crosses parts."""
    store = backend.make(**backend.tuned)
    sizes = [1, 100 * KiB, 4 * MiB, 1, 4 * MiB, 100 * KiB, 3 * MiB + 7, 1]
    key, data = newKey(), os.urandom(sum(sizes))
    state = await within(store.begin(key, len(data) if sized else None))
    offset = 0
    for i, size in enumerate(sizes):
        last = i == len(sizes) - 1
        end = len(data) if sized or last else None
        appended, _ = await append(store, key, state, offset, data[offset : offset + size], end)
        offset += size
        assert appended.offset == offset
        state = appended.state
    await concludeAndCheck(backend, store, key, state, data)


@pytest_twisted.ensureDeferred
async def test_a_cut_request_keeps_every_byte_written(backend: Backend) -> None:
    """The producer stops mid-way, mid-part: what it wrote is kept, and the
    next request goes on from there."""
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(13 * MiB + 5)
    state = await within(store.begin(key, len(data)))
    cut = 7 * MiB + 12345
    appended, feed = await append(store, key, state, 0, data, end=len(data), cutAt=cut)
    assert feed.sent == cut
    assert appended.offset == cut
    second = 11 * MiB + 1
    again, _ = await append(
        store, key, appended.state, cut, data[cut:], end=len(data), cutAt=second - cut
    )
    assert again.offset == second
    last, _ = await append(store, key, again.state, second, data[second:], end=len(data))
    assert last.offset == len(data)
    await concludeAndCheck(backend, store, key, last.state, data)


@pytest_twisted.ensureDeferred
async def test_a_dropped_request_leaves_offset_and_content(backend: Backend) -> None:
    """A checksum that did not match: the request's bytes go, the write is as before."""
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(9 * MiB + 77)
    state = await within(store.begin(key, None))
    first = 3 * MiB + 1
    kept, _ = await append(store, key, state, 0, data[:first])
    wrong = os.urandom(len(data) - first)
    dropped, _ = await append(store, key, kept.state, first, wrong, revocable=True, keep=False)
    assert (dropped.state, dropped.offset) == (kept.state, first)
    # Revocable and kept, then a last request dropped too.
    middle = 6 * MiB
    second, _ = await append(store, key, kept.state, first, data[first:middle], revocable=True)
    assert second.offset == middle
    dropped, _ = await append(
        store, key, second.state, middle, wrong[: 2 * MiB], revocable=True, keep=False
    )
    assert (dropped.state, dropped.offset) == (second.state, middle)
    last, _ = await append(store, key, second.state, middle, data[middle:], end=len(data))
    await concludeAndCheck(backend, store, key, last.state, data)


@pytest_twisted.ensureDeferred
async def test_a_write_past_the_end_is_refused(backend: Backend) -> None:
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(300 * KiB)
    state = await within(store.begin(key, len(data)))
    appender = store.append(key, state, 0, end=len(data) - 1)
    appender.write(data[:-1])
    with pytest.raises(SizeMismatch):
        appender.write(data[-1:])
    appended = await within(appender.close())
    assert appended.offset == len(data) - 1
    await within(store.cancel(key, appended.state))
    assert backend.leftovers(key) == []


@pytest_twisted.ensureDeferred
async def test_conclude_with_another_size_is_a_size_mismatch(backend: Backend) -> None:
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(MiB + 3)
    state = await within(store.begin(key, None))
    appended, _ = await append(store, key, state, 0, data)
    for size in (len(data) - 1, len(data) + 1):
        with pytest.raises(SizeMismatch):
            await within(store.conclude(key, appended.state, size))
    with pytest.raises(BlobNotFound):
        await read(store, key)
    await concludeAndCheck(backend, store, key, appended.state, data)


@pytest_twisted.ensureDeferred
async def test_cancel_leaves_nothing(backend: Backend) -> None:
    """Parts, a session, staged pieces: all gone, and twice is fine."""
    store = backend.make(**backend.tuned)
    key, data = newKey(), os.urandom(7 * MiB + 3)
    state = await within(store.begin(key, None))
    first, _ = await append(store, key, state, 0, data[: 2 * MiB + 1])
    second, _ = await append(store, key, first.state, first.offset, data[first.offset :])
    assert backend.leftovers(key) != []
    await within(store.cancel(key, second.state))
    assert backend.leftovers(key) == []
    await within(store.cancel(key, second.state))
    await within(store.cancel(key, first.state))  # an older state finds nothing either
    assert backend.leftovers(key) == []


@pytest_twisted.ensureDeferred
async def test_a_state_not_its_own_is_refused(backend: Backend) -> None:
    """Read back from the database, a state is data: another key's, another
    bucket's or endpoint's, or none at all, is never acted on."""
    store = backend.make()
    key, other = newKey(), newKey()
    state = await within(store.begin(key, None))
    appended, _ = await append(store, key, state, 0, b"x" * 1000)
    refusals: list[tuple[IResumableBlobStore, str, str]] = [
        (store, other, appended.state),
        (store, key, "not json"),
        (store, key, '{"store": "s3"}'),
        (store, key, "[]"),
    ]
    refusals += [(make(), key, appended.state) for make in backend.elsewhere]
    for where, name, text in refusals:
        with pytest.raises(BlobStoreError):
            # Refused at once, or at the close at the latest.
            appender = where.append(name, text, 1000)
            appender.write(b"y")
            await within(appender.close())
        with pytest.raises(BlobStoreError):
            await within(where.conclude(name, text, 1000))
        with pytest.raises(BlobStoreError):
            await within(where.cancel(name, text))
    with pytest.raises(BlobNotFound):
        await read(store, other)
    # Still whole: nothing was done to it.
    await concludeAndCheck(backend, store, key, appended.state, b"x" * 1000)


@pytest_twisted.ensureDeferred
async def test_another_node_goes_on_from_the_state(backend: Backend) -> None:
    """A second store object on the same bucket (another node) takes the
    next request, and a third concludes."""
    nodes = [backend.make(**backend.tuned) for _ in range(3)]
    key, data = newKey(), os.urandom(8 * MiB + 11)
    state = await within(nodes[0].begin(key, len(data)))
    first, _ = await append(nodes[0], key, state, 0, data, end=len(data), cutAt=3 * MiB + 1)
    second, _ = await append(
        nodes[1], key, first.state, first.offset, data[first.offset :], end=len(data)
    )
    assert second.offset == len(data)
    await concludeAndCheck(backend, nodes[2], key, second.state, data)


def residentBytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@implementer(IPushProducer)
class Pattern:
    """
    Plays a large request's body without holding it: C{length} bytes from
    C{start} of a blob whose every MiB is a rotation of one random MiB,
    written a MiB at a time while not paused; stops after C{cutAt} bytes.
    """

    base = os.urandom(MiB)

    def __init__(self, appender: IConsumer, start: int, length: int, cutAt: int | None = None):
        assert start % MiB == 0
        self.appender = appender
        self.position = start
        self.stop = start + (length if cutAt is None else cutAt)
        self.paused = False
        self.done: Deferred[None] = Deferred()
        self._scheduled = False

    @classmethod
    def block(cls, index: int) -> bytes:
        shift = index % MiB
        return cls.base[shift:] + cls.base[:shift]

    def start(self) -> Deferred[None]:
        self.appender.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if not self._scheduled and not self.paused and not self.done.called:
            self._scheduled = True
            reactor.callLater(0, self._step)

    def _step(self) -> None:
        self._scheduled = False
        while not self.paused and not self.done.called:
            if self.position >= self.stop:
                self.appender.unregisterProducer()
                self.done.callback(None)
                return
            index, inside = divmod(self.position, MiB)
            data = self.block(index)[inside : inside + self.stop - self.position]
            self.position += len(data)
            self.appender.write(data)
            break
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IConsumer)
class Digest:
    """Hashes what a download gives, keeping none of it."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_large_upload_in_large_requests_holds_little_memory(backend: Backend) -> None:
    """
    1 GiB as 100 MiB requests, three of them cut mid-part, at the store's
    own settings: this process's resident memory grows by a part and its
    buffers at most, never with the requests.
    """
    from twisted.internet.task import LoopingCall

    store = backend.make()
    key, size, request = newKey(), 1024 * MiB, 100 * MiB
    expected = hashlib.sha256()
    for index in range(size // MiB):
        expected.update(Pattern.block(index))
    state = await within(store.begin(key, size))
    baseline = peak = residentBytes()

    def sample() -> None:
        nonlocal peak
        peak = max(peak, residentBytes())

    sampler = LoopingCall(sample)
    sampler.start(0.01)
    offset, cuts = 0, [3 * MiB + 12345, 57 * MiB + 1, 99 * MiB + 7]
    try:
        while offset < size:
            start = offset - offset % MiB
            appender = store.append(key, state, offset, end=size)
            cut = cuts.pop(0) if cuts and offset > 0 else None
            feed = Pattern(appender, start, min(request, size - start), cutAt=cut)
            feed.position = offset  # the client goes on from the offset it was told
            await within(feed.start(), 300)
            appended = await within(appender.close(), 300)
            assert appended.offset == feed.position
            state, offset = appended.state, appended.offset
    finally:
        sampler.stop()
    assert not cuts
    await within(store.conclude(key, state, size), 300)
    digest = Digest()
    await within(store.produce(key, digest), 300)
    assert (digest.size, digest.hash.hexdigest()) == (size, expected.hexdigest())
    await within(store.delete(key))
    assert peak - baseline < 80 * MiB, f"grew by {(peak - baseline) / MiB:.0f} MiB"


class SessionStatus(Resource):
    """
    A fake-gcs-server seen through a proxy that answers what the emulator
    does not: an upload session's status query (a PUT of nothing with
    C{Content-Range: bytes */...}, answered 308 with the C{Range} held, as
    Google does; the emulator would finish the upload instead).  It counts
    what each session took, which the emulator appends whatever its range.
    Everything else is passed on, session URLs made its own.
    """

    isLeaf = True

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.base = ""
        self.held: dict[str, int] = {}
        self.queries = 0
        self._agent = Agent(reactor)

    def render(self, request: Request) -> Any:
        uri = request.uri.decode()
        session = parse_qs(urlsplit(uri).query).get("upload_id", [""])[0]
        body = request.content.read() if request.content is not None else b""
        contentRange = request.getHeader("content-range") or ""
        if request.method == b"PUT" and not body and contentRange.startswith("bytes */"):
            self.queries += 1
            held = self.held.get(session, 0)
            if held:
                request.setHeader("range", f"bytes=0-{held - 1}")
            request.setResponseCode(308)
            return b""

        def failed(reason: Failure) -> None:
            request.setResponseCode(502)
            request.write(reason.getErrorMessage().encode())
            request.finish()

        Deferred.fromCoroutine(self._forward(request, uri, body, session)).addErrback(failed)
        return NOT_DONE_YET

    async def _forward(self, request: Request, uri: str, body: bytes, session: str) -> None:
        headers = Headers(
            {k: v for k, v in request.requestHeaders.getAllRawHeaders() if k.lower() != b"host"}
        )
        response = await self._agent.request(
            request.method, (self.target + uri).encode(), headers, BytesBody(body)
        )
        content = await treq.content(response)
        if response.code in (200, 201, 308) and session and request.method == b"PUT":
            self.held[session] = self.held.get(session, 0) + len(body)
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() in (b"content-length", b"connection", b"transfer-encoding"):
                continue
            request.responseHeaders.setRawHeaders(
                name, [v.replace(self.target.encode(), self.base.encode()) for v in values]
            )
        request.write(content)
        request.finish()


@pytest.mark.parametrize("backend", ["gcs"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_session_that_took_more_than_its_state_says_goes_on_from_the_truth(
    backend: Backend, fakeGCS: FakeGCS, pool: ThreadPool
) -> None:
    """
    A request whose chunks reached Google but whose new state was never
    kept (its node died first): the client sends those bytes again from
    the offset it was told, and the write asks the session what it holds
    and skips what it has, so that no byte is in the blob twice.
    """
    proxy = SessionStatus(fakeGCS.endpoint)
    port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Site(proxy)
    )
    try:
        proxy.base = f"http://127.0.0.1:{port.getHost().port}"
        store = GCSBlobStore(
            fakeGCS.bucket,
            reactor,
            pool,
            endpoint=proxy.base,
            chunkSize=256 * KiB,
            askSessions=True,
        )
        key, data = newKey(), os.urandom(2 * MiB + 5)
        state = await within(store.begin(key, None))
        first, _ = await append(store, key, state, 0, data[: 600 * KiB])
        assert first.offset == 600 * KiB
        lost, _ = await append(store, key, first.state, first.offset, data[600 * KiB : 1300 * KiB])
        assert lost.offset == 1300 * KiB  # never kept: the next request has the first state
        again, _ = await append(store, key, first.state, first.offset, data[600 * KiB :])
        assert again.offset == len(data)
        await within(store.conclude(key, again.state, len(data)))
        assert await read(store, key) == data
        assert proxy.queries == 4  # each request, and the conclusion pushing the tail
        assert backend.leftovers(key) == [key]
        await within(store.delete(key))
    finally:
        await port.stopListening()
