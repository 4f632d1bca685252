"""
One contract for every blob store, run against each backend for real: the
local disk, the in-memory mock, S3 (a SeaweedFS started for the session)
and Google Cloud Storage (a fake-gcs-server started for the session).
The listing the sweep reads runs on a store of its own (a new directory or
bucket), so that it sees no other test's objects.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import quote, urlsplit

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet import endpoints, reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer, IReactorFromThreads
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from morpheo._errors import BlobNotFound, BlobStoreError, SizeMismatch
from morpheo._interfaces import (
    IAbandonableBlobStore,
    IBlobStore,
    IBlobWriter,
    ISweepableBlobStore,
)
from morpheo._kinds import KINDS, isBlobKey
from morpheo.blobstores._gcs import GCSBlobStore
from morpheo.blobstores._local import TEMP_PREFIX, LocalBlobStore
from morpheo.blobstores._memory import MemoryBlobStore
from morpheo.blobstores._s3 import S3BlobStore
from tests.integration.helpers import eventually, within
from tests.integration.servers import FakeGCS, SeaweedFS, freePort

MiB = 1024 * 1024
KiB = 1024
TIMEOUT = 120.0
#: The reactor as the local store sees it: what runs its threads' results.
threadedReactor = cast(IReactorFromThreads, reactor)


def newKey() -> str:
    return f"test/{uuid.uuid4()}"


def blobOf(size: int) -> bytes:
    return os.urandom(size)


@implementer(IPushProducer)
class Source:
    """
    Plays an upload's request body: writes C{data} into a blob writer in
    C{chunk}s, C{burst} of them per reactor turn, and only while not paused
    (the socket being read, or not).
    """

    def __init__(
        self, writer: IBlobWriter, data: bytes, chunk: int = 64 * KiB, burst: int = 4
    ) -> None:
        self.writer = writer
        self.data = memoryview(data)
        self.chunk = chunk
        self.burst = burst
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.sentAtFirstPause: int | None = None
        self.done: Deferred[None] = Deferred()
        self._scheduled = False

    def start(self) -> Deferred[None]:
        self.writer.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if not self._scheduled and not self.paused and not self.done.called:
            self._scheduled = True
            reactor.callLater(0, self._step)

    def _step(self) -> None:
        self._scheduled = False
        for _ in range(self.burst):
            if self.paused or self.done.called:
                return
            if self.sent >= len(self.data):
                self.writer.unregisterProducer()
                self.done.callback(None)
                return
            block = bytes(self.data[self.sent : self.sent + self.chunk])
            self.sent += len(block)
            try:
                self.writer.write(block)
            except Exception as e:
                self.writer.unregisterProducer()
                self.done.errback(e)
                return
        self._schedule()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
            if self.sentAtFirstPause is None:
                self.sentAtFirstPause = self.sent
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IConsumer)
class Sink:
    """Plays a download's response: keeps what it gets, pauses on demand."""

    def __init__(self, pauseAt: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.producer: IPushProducer | None = None
        self.registrations = 0
        self.unregistrations = 0
        self.pauseAt = pauseAt
        self.receivedAtPause: int | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        assert streaming, "blob stores must register push producers"
        self.producer = IPushProducer(producer)
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.unregistrations += 1

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if (
            self.pauseAt is not None
            and self.receivedAtPause is None
            and self.received >= self.pauseAt
        ):
            self.receivedAtPause = self.received
            assert self.producer is not None
            self.producer.pauseProducing()


@define
class Backend:
    """How to build one kind of store for the tests, and look behind it."""

    name: str
    make: Callable[..., IBlobStore]
    makeDown: Callable[[], IBlobStore]
    leftovers: Callable[[IBlobStore, str], Deferred[list[str]] | list[str]]
    #: Whether its failures are a remote backend's (a 502) or ours (a 500).
    remote: bool
    #: A store of its own, empty: a directory or a bucket nobody else uses.
    makeEmpty: Callable[[], IBlobStore]
    tuned: dict[str, Any] = field(factory=dict)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    threads = ThreadPool(minthreads=1, maxthreads=4, name="blobstore-test")
    threads.start()
    yield threads
    threads.stop()


def _localLeftovers(store: IBlobStore, key: str) -> list[str]:
    assert isinstance(store, LocalBlobStore)
    found = []
    for dirpath, _, files in os.walk(store.root):
        for name in files:
            path = os.path.relpath(os.path.join(dirpath, name), store.root)
            if name.startswith(TEMP_PREFIX) or path == key:
                found.append(path)
    return found


def _s3Leftovers(store: IBlobStore, key: str) -> Deferred[list[str]]:
    assert isinstance(store, S3BlobStore)
    d = store.listUploads(prefix=key)
    return d.addCallback(lambda uploads: [f"multipart upload {u}" for u in uploads])


@pytest.fixture(params=["local", "mock", "s3", "gcs"])
def backend(request: pytest.FixtureRequest, pool: ThreadPool, tmp_path: Any) -> Backend:
    name = request.param
    if name == "local":
        # A root under a plain file can be neither read nor written.
        (tmp_path / "plain-file").write_bytes(b"")
        return Backend(
            name,
            lambda **kw: LocalBlobStore(str(tmp_path / "blobs"), threadedReactor, pool),
            lambda: LocalBlobStore(str(tmp_path / "plain-file" / "blobs"), threadedReactor, pool),
            _localLeftovers,
            remote=False,
            makeEmpty=lambda: LocalBlobStore(
                str(tmp_path / f"empty-{uuid.uuid4()}"), threadedReactor, pool
            ),
        )
    if name == "mock":
        mock = MemoryBlobStore(reactor)

        def down() -> MemoryBlobStore:
            broken = MemoryBlobStore(reactor)
            broken.down = True
            return broken

        return Backend(
            name,
            lambda **kw: mock,
            down,
            lambda store, key: [k for k in mock.keys() if k == key],
            remote=False,
            makeEmpty=lambda: MemoryBlobStore(reactor),
        )
    if name == "s3":
        server: SeaweedFS = request.getfixturevalue("seaweedfs")

        def s3(
            endpoint: str = server.endpoint, bucket: str = server.bucket, **kw: Any
        ) -> S3BlobStore:
            return S3BlobStore(
                bucket,
                server.region,
                reactor,
                pool,
                endpoint=endpoint,
                credentials=server.credentials,
                **kw,
            )

        return Backend(
            name,
            s3,
            lambda: s3(endpoint=f"http://127.0.0.1:{freePort()}"),
            _s3Leftovers,
            remote=True,
            makeEmpty=lambda: s3(bucket=emptyBucket(server)),
            tuned={"partThreshold": 5 * MiB, "partSize": 5 * MiB},
        )
    assert name == "gcs"
    gcs: FakeGCS = request.getfixturevalue("fakeGCS")

    def google(endpoint: str = gcs.endpoint, bucket: str = gcs.bucket, **kw: Any) -> GCSBlobStore:
        return GCSBlobStore(bucket, reactor, pool, endpoint=endpoint, **kw)

    return Backend(
        name,
        google,
        lambda: google(endpoint=f"http://127.0.0.1:{freePort()}"),
        lambda store, key: gcs.objects(prefix=key),
        remote=True,
        makeEmpty=lambda: google(bucket=emptyBucket(gcs)),
        tuned={"chunkSize": 256 * KiB},
    )


def emptyBucket(server: SeaweedFS | FakeGCS) -> str:
    """A new bucket of the emulator's, for what must see no other test's objects."""
    name = f"empty-{uuid.uuid4().hex[:20]}"
    server.createBucket(name)
    return name


async def leftovers(backend: Backend, store: IBlobStore, key: str) -> list[str]:
    found = backend.leftovers(store, key)
    if isinstance(found, Deferred):
        return list(await within(found))
    return found


async def put(
    store: IBlobStore, key: str, data: bytes, chunk: int = 64 * KiB, sized: bool = True
) -> tuple[Any, Source]:
    """Write C{data} under C{key}, its size announced (or, with C{sized}
    false, known at the end only)."""
    writer = store.writer(key, len(data) if sized else None)
    source = Source(writer, data, chunk=chunk)
    try:
        await within(source.start())
        info = await within(writer.finish())
    except BaseException:
        await within(writer.abort())
        raise
    return info, source


async def get(store: IBlobStore, key: str, offset: int = 0, length: int | None = None) -> bytes:
    sink = Sink()
    await within(store.produce(key, sink, offset, length))
    assert sink.registrations == sink.unregistrations == 1
    return sink.data


async def assertGone(backend: Backend, store: IBlobStore, key: str) -> None:
    with pytest.raises(BlobNotFound):
        await within(store.produce(key, Sink()))
    assert await leftovers(backend, store, key) == []


@pytest_twisted.ensureDeferred
async def test_provides_interfaces(backend: Backend) -> None:
    store = backend.make()
    verifyObject(IBlobStore, store)
    # What an unfinished write leaves is removed by abandon, but on local
    # disk, where a temporary file is swept by its name.
    if backend.name == "local":
        assert not IAbandonableBlobStore.providedBy(store)
    else:
        verifyObject(IAbandonableBlobStore, store)
    writer = store.writer(newKey(), 1)
    verifyObject(IBlobWriter, writer)
    await within(writer.abort())
    await within(store.check())


def test_says_whether_it_is_remote(backend: Backend) -> None:
    """The web layer answers a remote store's failure with a 502, its own with a 500."""
    store = backend.make()
    assert store.remote is backend.remote
    assert type(store).remote is backend.remote  # a class attribute, the same for every store


@pytest.mark.parametrize("size", [0, 1, 256 * KiB - 1, 256 * KiB, 256 * KiB + 1])
@pytest_twisted.ensureDeferred
async def test_put_get_delete(backend: Backend, size: int) -> None:
    store = backend.make()
    key, data = newKey(), blobOf(size)
    info, _ = await put(store, key, data)
    assert (info.size, info.sha256) == (size, hashlib.sha256(data).hexdigest())
    assert await get(store, key) == data
    await within(store.delete(key))
    await assertGone(backend, store, key)


@pytest_twisted.ensureDeferred
async def test_big_blob_default_settings(backend: Backend) -> None:
    """Over 64 MiB: past S3's default single-PUT threshold, several GCS chunks."""
    store = backend.make()
    key, data = newKey(), blobOf(64 * MiB + 1)
    info, _ = await put(store, key, data, chunk=256 * KiB)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    got = await get(store, key)
    assert len(got) == len(data) and got == data
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_blob_across_many_parts_reads_back_whole_and_in_ranges(backend: Backend) -> None:
    """Small parts or chunks, so that a cheap blob crosses several of them."""
    store = backend.make(**backend.tuned)
    key, data = newKey(), blobOf(12 * MiB + 3)
    info, _ = await put(store, key, data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await get(store, key) == data
    assert await get(store, key, 5 * MiB - 2, 4) == data[5 * MiB - 2 : 5 * MiB + 2]
    await within(store.delete(key))


#: Around the tuned part and chunk lengths (S3 5 MiB, GCS 256 KiB): within
#: the first one, exactly one, one and a byte, several and a bit.
UNKNOWN_SIZES = [0, 1, 256 * KiB, 256 * KiB + 1, 5 * MiB, 5 * MiB + 1, 11 * MiB + 3]


@pytest.mark.parametrize("size", UNKNOWN_SIZES)
@pytest_twisted.ensureDeferred
async def test_a_blob_of_unknown_size(backend: Backend, size: int) -> None:
    """A chunked request body: the writer learns the size at the end."""
    store = backend.make(**backend.tuned)
    key, data = newKey(), blobOf(size)
    info, _ = await put(store, key, data, sized=False)
    assert (info.size, info.sha256) == (size, hashlib.sha256(data).hexdigest())
    assert await get(store, key) == data
    await within(store.delete(key))
    await assertGone(backend, store, key)


@pytest_twisted.ensureDeferred
async def test_a_blob_of_unknown_size_default_settings(backend: Backend) -> None:
    """Past S3's 16 MiB parts and GCS's 32 MiB chunks, as the service runs."""
    store = backend.make()
    key, data = newKey(), blobOf(40 * MiB + 5)
    info, _ = await put(store, key, data, chunk=256 * KiB, sized=False)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await get(store, key) == data
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_a_blob_of_unknown_size_aborted_midway_leaves_nothing(backend: Backend) -> None:
    store = backend.make(**backend.tuned)
    key, data = newKey(), blobOf(12 * MiB)
    writer = store.writer(key, None)
    await within(Source(writer, data).start())
    await deferLater(reactor, 0.3)  # whole parts sent, the rest held
    with pytest.raises(BlobNotFound):
        await within(store.produce(key, Sink()))
    await within(writer.abort())
    await assertGone(backend, store, key)


@pytest_twisted.ensureDeferred
async def test_ranges(backend: Backend) -> None:
    store = backend.make()
    key, data = newKey(), blobOf(MiB + 5)
    await put(store, key, data)
    for offset, length in [
        (0, None),
        (0, 1),
        (10, 100),
        (MiB, 5),
        (len(data) - 1, 1),
        (100, None),
        (len(data) - 1, None),
        (7, 0),
    ]:
        end = None if length is None else offset + length
        assert await get(store, key, offset, length) == data[offset:end], (offset, length)
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_put_again_replaces_the_blob(backend: Backend) -> None:
    store = backend.make()
    key = newKey()
    await put(store, key, b"first version")
    await put(store, key, b"second")
    assert await get(store, key) == b"second"
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_nothing_visible_before_finish(backend: Backend) -> None:
    store = backend.make(**backend.tuned)
    key, data = newKey(), blobOf(6 * MiB)
    writer = store.writer(key, len(data))
    await within(Source(writer, data).start())
    await deferLater(reactor, 0.3)  # time for every byte to reach the store
    with pytest.raises(BlobNotFound):
        await within(store.produce(key, Sink()))
    info = await within(writer.finish())
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await get(store, key) == data
    await within(store.delete(key))


@pytest.mark.parametrize("tuned", [False, True], ids=["default", "small-parts"])
@pytest_twisted.ensureDeferred
async def test_too_few_bytes(backend: Backend, tuned: bool) -> None:
    store = backend.make(**(backend.tuned if tuned else {}))
    key, data = newKey(), blobOf(6 * MiB)
    writer = store.writer(key, len(data) + 1)
    await within(Source(writer, data).start())
    with pytest.raises(SizeMismatch) as caught:
        await within(writer.finish())
    assert (caught.value.expected, caught.value.received) == (len(data) + 1, len(data))
    await within(writer.abort())  # allowed after a failed finish
    await assertGone(backend, store, key)


@pytest.mark.parametrize("tuned", [False, True], ids=["default", "small-parts"])
@pytest_twisted.ensureDeferred
async def test_too_many_bytes(backend: Backend, tuned: bool) -> None:
    store = backend.make(**(backend.tuned if tuned else {}))
    key, data = newKey(), blobOf(6 * MiB)
    writer = store.writer(key, len(data) - 1)
    with pytest.raises(SizeMismatch):
        await within(Source(writer, data).start())
    await within(writer.abort())
    await within(writer.abort())  # and more than once
    await assertGone(backend, store, key)


@pytest.mark.parametrize("tuned", [False, True], ids=["default", "small-parts"])
@pytest_twisted.ensureDeferred
async def test_abort_midway(backend: Backend, tuned: bool) -> None:
    store = backend.make(**(backend.tuned if tuned else {}))
    key, data = newKey(), blobOf(12 * MiB)
    writer = store.writer(key, 2 * len(data))
    await within(Source(writer, data).start())
    await deferLater(reactor, 0.3)  # parts in flight, some done
    await within(writer.abort())
    with pytest.raises((RuntimeError, BlobStoreError)):
        writer.write(b"more")
    await assertGone(backend, store, key)


@pytest_twisted.ensureDeferred
async def test_upload_backpressure(backend: Backend) -> None:
    """A producer faster than the store is paused at the high water mark."""
    store = backend.make()
    key, data = newKey(), blobOf(24 * MiB)
    writer = store.writer(key, len(data))
    source = Source(writer, data, chunk=64 * KiB, burst=10_000)
    await within(source.start())
    assert source.pauses >= 1
    assert source.sentAtFirstPause is not None
    assert source.sentAtFirstPause <= 8 * MiB
    info = await within(writer.finish())
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    await within(store.delete(key))


async def startDownload(
    backend: Backend, size: int
) -> tuple[IBlobStore, str, bytes, Sink, Deferred[None]]:
    """A stored blob of C{size} on its way to a sink that pauses at once."""
    store = backend.make()
    key, data = newKey(), blobOf(size)
    await put(store, key, data, chunk=256 * KiB)
    sink = Sink(pauseAt=1)
    return store, key, data, sink, store.produce(key, sink)


@pytest_twisted.ensureDeferred
async def test_download_backpressure(backend: Backend) -> None:
    """A paused consumer stops the reading; resuming finishes the transfer."""
    store, key, data, sink, done = await startDownload(backend, 32 * MiB)
    finished: list[object] = []

    def end(result: object) -> object:
        finished.append(result)
        return result

    done.addBoth(end)

    async def paused() -> None:
        assert sink.receivedAtPause is not None

    await eventually(paused)
    heldBack = sink.received
    await deferLater(reactor, 0.3)
    assert sink.received == heldBack, "bytes kept coming while paused"
    assert heldBack <= 4 * MiB and not finished
    assert sink.producer is not None
    sink.producer.resumeProducing()
    await within(done)
    assert sink.data == data
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_cancel_download(backend: Backend) -> None:
    store, key, data, sink, done = await startDownload(backend, 16 * MiB)

    async def flowing() -> None:
        assert sink.received > 0

    await eventually(flowing)
    done.cancel()
    with pytest.raises(CancelledError):
        await within(done)
    received = sink.received
    await deferLater(reactor, 0.2)
    assert sink.received == received < len(data)
    assert sink.unregistrations == sink.registrations
    # The store is still usable afterwards.
    assert await get(store, key, 0, 10) == data[:10]
    await within(store.delete(key))


@pytest_twisted.ensureDeferred
async def test_missing_key_is_blob_not_found_and_delete_is_quiet(backend: Backend) -> None:
    store = backend.make()
    key = newKey()
    sink = Sink()
    with pytest.raises(BlobNotFound):
        await within(store.produce(key, sink))
    with pytest.raises(BlobNotFound):
        await within(store.produce(key, Sink(), 0, 0))
    assert sink.received == 0
    await within(store.delete(key))


@pytest.mark.parametrize("size", [0, 1000])
@pytest_twisted.ensureDeferred
async def test_stat_says_a_blob_is_there_and_its_size(backend: Backend, size: int) -> None:
    """What a HEAD asks before it promises a blob: there, of this size; or not there."""
    store = backend.make()
    key = newKey()
    with pytest.raises(BlobNotFound):
        await within(store.stat(key))
    await put(store, key, blobOf(size))
    assert await within(store.stat(key)) == size
    await within(store.delete(key))
    with pytest.raises(BlobNotFound):
        await within(store.stat(key))


@pytest.mark.parametrize("operation", ["check", "produce", "stat", "delete"])
@pytest_twisted.ensureDeferred
async def test_unusable_backend_is_a_blob_store_error(backend: Backend, operation: str) -> None:
    """An unusable backend is a BlobStoreError saying what failed."""
    store = backend.makeDown()
    key = newKey()
    attempts: dict[str, Callable[[], Deferred[Any]]] = {
        "check": store.check,
        "produce": lambda: store.produce(key, Sink()),
        "stat": lambda: store.stat(key),
        "delete": lambda: store.delete(key),
    }
    with pytest.raises(BlobStoreError) as caught:
        await within(attempts[operation]())
    assert not isinstance(caught.value, BlobNotFound)
    assert str(caught.value)


@pytest_twisted.ensureDeferred
async def test_backend_down_upload(backend: Backend) -> None:
    store = backend.makeDown()
    key = newKey()
    writer = store.writer(key, 3 * MiB)
    with pytest.raises(BlobStoreError) as caught:
        await within(Source(writer, blobOf(3 * MiB)).start())
        await within(writer.finish())
    assert str(caught.value)
    await within(writer.abort())
    # Never begun at the store: nothing for anyone to find.
    assert await within(writer.started()) is None


@pytest.mark.parametrize("tuned", [False, True], ids=["default", "small-parts"])
@pytest_twisted.ensureDeferred
async def test_started_gives_a_handle_only_where_one_is_needed(
    backend: Backend, tuned: bool
) -> None:
    """
    A write's handle comes once the store has begun it, before it is
    finished: on GCS its session's URL, which nothing else finds; elsewhere
    none (a temporary file is swept by its name, an S3 multipart upload is
    listed by its key, memory goes with the process).
    """
    store = backend.make(**(backend.tuned if tuned else {}))
    key, data = newKey(), blobOf(6 * MiB)
    writer = store.writer(key, len(data) + 1)
    started = writer.started()
    await within(Source(writer, data).start())
    handle = await within(started)
    if backend.name == "gcs":
        assert isinstance(store, GCSBlobStore)
        assert isinstance(handle, str) and store.ownSession(key, handle)
    else:
        assert handle is None
    assert await within(writer.started()) == handle
    await within(writer.abort())
    await assertGone(backend, store, key)


@pytest_twisted.ensureDeferred
async def test_a_write_ended_before_it_began_has_no_handle(backend: Backend) -> None:
    store = backend.make()
    writer = store.writer(newKey(), 10)
    started = writer.started()
    await within(writer.abort())
    assert await within(started) is None


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_abandon_what_a_dead_writer_left(backend: Backend) -> None:
    """
    A writer whose process died never aborts its multipart upload; the
    sweep's L{IAbandonableBlobStore.abandon} does, and removes a blob that
    was committed under the key too.
    """
    store = backend.make(**backend.tuned)
    assert verifyObject(IAbandonableBlobStore, store)
    key, data = newKey(), blobOf(12 * MiB)
    writer = store.writer(key, 2 * len(data))
    await within(Source(writer, data).start())

    # Parts sent; the writer is left as a dead process leaves it.
    async def sent() -> None:
        assert await leftovers(backend, store, key) != []

    await eventually(sent)
    abandonable = IAbandonableBlobStore(store)
    await within(abandonable.abandon(key))
    assert await leftovers(backend, store, key) == []
    await within(writer.abort())

    committed = newKey()
    await put(store, committed, b"committed, never referenced")
    await within(abandonable.abandon(committed))
    with pytest.raises(BlobNotFound):
        await get(store, committed)
    await within(abandonable.abandon(newKey()))  # nothing there: not an error


# Listing, for the sweep


def serviceKeys(kind: str, count: int) -> list[str]:
    """Keys of the shape the service writes, under C{kind}."""
    keys = [f"{kind}/{uuid.uuid4()}-{os.urandom(6).hex()}" for _ in range(count)]
    assert all(map(isBlobKey, keys))
    return keys


#: Objects another program may keep in the same bucket or directory.
NOT_OURS = ["data/readme.txt", f"data/{uuid.uuid4()}", "backups/all.tar", "test/x"]


async def listing(
    store: IBlobStore, olderThan: float = 0.0, pageSize: int = 1000, delete: bool = False
) -> list[list[str]]:
    """Every page listed; with C{delete}, each page's keys deleted before the next is asked for."""
    sweepable = ISweepableBlobStore(store)
    found = []
    async for page in sweepable.listKeys(olderThan, pageSize):
        found.append(page)
        if delete:
            for key in page:
                await within(store.delete(key))
    return found


async def stored(backend: Backend) -> tuple[IBlobStore, list[str]]:
    """An empty store of its own, with service keys (more than a page under data/) and others'."""
    store = backend.makeEmpty()
    keys = serviceKeys("data", 5) + serviceKeys(KINDS[0], 1) + serviceKeys(KINDS[-1], 1)
    for key in keys + NOT_OURS:
        await put(store, key, b"x")
    return store, keys


@pytest_twisted.ensureDeferred
async def test_is_sweepable(backend: Backend) -> None:
    store = backend.makeEmpty()
    assert verifyObject(ISweepableBlobStore, store)
    assert await within(ISweepableBlobStore(store).sweepTemporary(0.0)) == []
    assert await listing(store) == []


@pytest_twisted.ensureDeferred
async def test_a_write_in_flight_is_never_swept_as_temporary(backend: Backend) -> None:
    """However long ago it last wrote: an upload may stall, and live on."""
    store = backend.makeEmpty()
    key, data = serviceKeys("data", 1)[0], blobOf(3 * MiB)
    writer = store.writer(key, len(data))
    source = Source(writer, data[:MiB])
    await within(source.start())
    await deferLater(reactor, 1.1)  # its last write a second ago
    await within(ISweepableBlobStore(store).sweepTemporary(1.0))
    writer.write(data[MiB:])
    info = await within(writer.finish())
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await get(store, key) == data


@pytest_twisted.ensureDeferred
async def test_lists_the_service_keys_in_pages(backend: Backend) -> None:
    """More keys than a page: every one of the service's once, the others' never."""
    store, keys = await stored(backend)
    pages = await listing(store, pageSize=2)
    assert all(0 < len(page) <= 2 for page in pages), pages
    listed = sum(pages, [])
    assert sorted(listed) == sorted(keys)
    assert len(pages) >= 4
    assert sorted(sum(await listing(store), [])) == sorted(keys)


@pytest_twisted.ensureDeferred
async def test_lists_on_while_each_page_is_deleted(backend: Backend) -> None:
    """As the sweep reads it: each page's keys deleted before the next is fetched."""
    store, keys = await stored(backend)
    listed = sum(await listing(store, pageSize=2, delete=True), [])
    assert sorted(listed) == sorted(keys)
    assert await listing(store) == []
    for key in NOT_OURS:
        assert await get(store, key) == b"x"


@pytest_twisted.ensureDeferred
async def test_lists_only_what_is_older_than_asked(backend: Backend) -> None:
    store, keys = await stored(backend)
    assert await listing(store, olderThan=3600.0) == []
    await deferLater(reactor, 1.1)
    assert sorted(sum(await listing(store, olderThan=1.0), [])) == sorted(keys)


@pytest_twisted.ensureDeferred
async def test_a_listing_closed_midway(backend: Backend) -> None:
    """A sweep that fails midway closes the listing: nothing is left open or broken."""
    store, keys = await stored(backend)
    pages = ISweepableBlobStore(store).listKeys(0.0, 2)
    first = await pages.__anext__()
    assert set(first) <= set(keys)
    await pages.aclose()
    assert sorted(sum(await listing(store), [])) == sorted(keys)


@pytest_twisted.ensureDeferred
async def test_listing_an_unusable_backend_is_a_blob_store_error(backend: Backend) -> None:
    store = backend.makeDown()
    with pytest.raises(BlobStoreError) as caught:
        await listing(store)
    assert str(caught.value)


def sessionTarget(session: str) -> str:
    """A session URL's path and query: what fake-gcs-server logs of a request to it."""
    parts = urlsplit(session)
    return f"{parts.path}?{parts.query}"


@pytest.mark.parametrize("backend", ["gcs"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_abandon_cancels_the_session_of_a_dead_writer(
    backend: Backend, fakeGCS: FakeGCS
) -> None:
    """
    A writer whose process died never cancels its resumable session: given
    the session's URL that the writer's handle was, L{abandon} does (a
    DELETE of it, answered 499), and removes the object if the upload was
    committed.  This fake-gcs-server answers the DELETE but keeps taking
    chunks on the session, so its request log is what tells.
    """
    store = backend.make(**backend.tuned)
    assert isinstance(store, GCSBlobStore)
    assert verifyObject(IAbandonableBlobStore, store)
    key, data = newKey(), blobOf(3 * MiB)
    writer = store.writer(key, 2 * len(data))
    await within(Source(writer, data).start())
    session = await within(writer.started())
    assert session is not None
    cancel = ("DELETE", sessionTarget(session), 499)
    # Left as a dead process leaves it: chunks sent, never cancelled.
    assert [r for r in fakeGCS.requests() if r[:2] == cancel[:2]] == []
    await within(store.abandon(key, session))
    assert fakeGCS.requests().count(cancel) == 1
    assert await leftovers(backend, store, key) == []

    committed = newKey()
    writer = store.writer(committed, 1000)
    await within(Source(writer, blobOf(1000)).start())
    await within(writer.finish())
    handle = await within(writer.started())
    assert handle is not None
    await within(store.abandon(committed, handle))
    assert ("DELETE", sessionTarget(handle), 499) in fakeGCS.requests()
    await assertGone(backend, store, committed)
    await within(store.abandon(newKey(), None))  # nothing there: not an error


class Recorder(Resource):
    """Answers every request as a session cancelled would, and keeps them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, bytes]] = []

    def render(self, request: Request) -> bytes:
        self.requests.append((request.method, request.uri))
        request.setResponseCode(499)
        return b"{}"


@pytest.mark.parametrize("backend", ["gcs"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_abandon_calls_no_url_but_a_session_of_its_own(
    backend: Backend, fakeGCS: FakeGCS
) -> None:
    """
    A handle is read back from the database: one that is not a session of
    this store's bucket on its own endpoint, for that key, is never called
    (no request, no credentials, to another host; no DELETE of another
    object on its own), and the object under the key goes all the same.
    """
    store = backend.make()
    assert isinstance(store, GCSBlobStore)
    recorder = Recorder()
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(Site(recorder))
    try:
        key, other = newKey(), newKey()
        await put(store, other, b"another object")
        base = fakeGCS.endpoint
        elsewhere = f"http://127.0.0.1:{port.getHost().port}"
        path = f"/upload/storage/v1/b/{quote(store.bucket, safe='')}/o"
        query = f"uploadType=resumable&name={quote(key, safe='')}&upload_id=x"
        for handle in [
            f"{elsewhere}{path}?{query}",
            f"{base}/storage/v1/b/{store.bucket}/o/{quote(other, safe='')}",
            f"{base}{path}?uploadType=resumable&name={quote(other, safe='')}&upload_id=x",
        ]:
            await put(store, key, b"committed")
            await within(store.abandon(key, handle))
            await assertGone(backend, store, key)
        assert recorder.requests == []
        assert await get(store, other) == b"another object"
        await within(store.delete(other))
    finally:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
