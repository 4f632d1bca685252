"""
The sweep of unreferenced blobs on the memory stores: keys listed a page at
a time, each page checked and swept before the next, only the service's
keys touched, and never a blob that a row or a live claim points to, however
uploads, replacements, deletions and sweeps interleave.  And what S3's and
Google Cloud Storage's listings say, as their documentation shows them.
"""

from __future__ import annotations

import json
import random
import uuid as _uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from morpheo import _errors as errors
from morpheo._interfaces import (
    KEY_PAGE,
    IBlobStore,
    IBlobWriter,
    IMetadataStore,
    ISweepableBlobStore,
)
from morpheo._kinds import KINDS, isBlobKey
from morpheo._types import BlobInfo, Claim
from morpheo.blobstores import _gcs, _s3
from morpheo.blobstores._httpstore import parseTime
from morpheo.objects import IncomingBlob, NewObject, Objects, Replacement, blobKey, sweepLeftovers

from .harness import Bytes, ImmediatePool, Service, newUUID, put

#: Keys a shared bucket may hold that are not the service's.
FOREIGN = [
    "backups/data.tar",
    "data/readme.txt",
    f"data/{_uuid.uuid4()}",
    f"data/{_uuid.uuid4()}-0123456789ab.bak",
    f"data/{str(_uuid.uuid4()).upper()}-0123456789ab",
    f"other/{_uuid.uuid4()}-0123456789ab",
    f"data/sub/{_uuid.uuid4()}-0123456789ab",
]


def commit(service: Service, key: str, data: bytes = b"left") -> None:
    """A blob committed under C{key} with nothing pointing to it."""
    writer = service.blobs.writer(key, len(data))
    writer.write(data)
    service.run(writer.finish())


def orphanKey(kind: str = "data") -> str:
    return blobKey(kind, newUUID())


def pages(service: Service, olderThan: float = 0.0, pageSize: int = KEY_PAGE) -> list[list[str]]:
    async def collect() -> list[list[str]]:
        return [page async for page in service.blobs.listKeys(olderThan, pageSize)]

    return service.run(collect())


def test_theServiceKeysAreOfTheirShapeAndNothingElseIs() -> None:
    for kind in KINDS:
        assert isBlobKey(blobKey(kind, newUUID()))
    for key in FOREIGN:
        assert not isBlobKey(key), key
    assert not isBlobKey(".tmp-abc")


def test_theMemoryStoreIsSweepable(service: Service) -> None:
    assert verifyObject(ISweepableBlobStore, service.blobs)


def test_theMemoryStoreListsItsKeysInPagesOfTheirAge(service: Service) -> None:
    keys = sorted(orphanKey(kind) for kind in KINDS for _ in range(2))
    for key in keys + FOREIGN:
        commit(service, key)
    assert pages(service, olderThan=5) == []
    service.advance(5)
    assert [len(p) for p in pages(service, olderThan=5, pageSize=3)] == [3, 3, 3, 1]
    assert sum(pages(service, olderThan=5, pageSize=3), []) == keys
    service.blobs.down = True
    with pytest.raises(errors.BlobStoreError):
        pages(service)


def test_theSweepRemovesTrueOrphansOnlyOverManyPages(service: Service) -> None:
    """More orphans than a page; ready and claimed blobs and others' keys stay."""
    ready = put(service, "data", b"kept")
    claimed = Claim("algo", newUUID(), orphanKey("algo"), token="t", text={"name": "a"})
    service.run(service.metadata.claim(claimed))
    assert claimed.blobKey is not None
    commit(service, claimed.blobKey)
    orphans = [orphanKey(kind) for kind in KINDS for _ in range(3)]
    for key in orphans + FOREIGN:
        commit(service, key)
    swept = service.run(sweepLeftovers(service.metadata, service.blobs, 0.0, pageSize=2))
    assert (swept.orphans, swept.temporary, swept.claims) == (len(orphans), 0, 0)
    assert service.blobKeys() == sorted([ready.blob_key, claimed.blobKey, *FOREIGN])


def test_orphansYoungerThanTheGraceAreKept(service: Service) -> None:
    key = orphanKey()
    commit(service, key)
    service.advance(9)
    assert not service.run(sweepLeftovers(service.metadata, service.blobs, 10.0))
    assert key in service.blobKeys()
    service.advance(1)
    assert service.run(sweepLeftovers(service.metadata, service.blobs, 10.0)).orphans == 1
    assert key not in service.blobKeys()


def test_objectsSweepWithTheirGraceAndAtStartEverythingOfTheirOwn(service: Service) -> None:
    """
    The start-up sweep takes every leftover of a store of the data
    directory's own for its dead predecessor's; later sweeps, and the one at
    start on a store other processes share (a bucket, a shared directory),
    keep what is younger than the grace.
    """
    pool: Any = ImmediatePool()
    objects = Objects(
        service.metadata, service.blobs, reactor=service.reactor, pool=pool, orphanGrace=10.0
    )
    young = orphanKey()
    commit(service, young)
    assert service.run(objects.sweep()).orphans == 0
    service.blobs.shared = True
    assert service.run(objects.sweep(atStart=True)).orphans == 0
    service.blobs.shared = False
    assert service.run(objects.sweep(atStart=True)).orphans == 1
    old = orphanKey()
    commit(service, old)
    service.advance(10)
    assert service.run(objects.sweep()).orphans == 1
    assert service.blobKeys() == []


@implementer(ISweepableBlobStore)
class Recording:
    """The memory store, with what the sweep asks of it in order."""

    def __init__(self, service: Service) -> None:
        self.inner = service.blobs
        self.name, self.remote, self.shared = self.inner.name, self.inner.remote, self.inner.shared
        self.events: list[str] = []

    def writer(self, key: str, size: int | None) -> IBlobWriter:
        return self.inner.writer(key, size)

    def produce(
        self, key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        return self.inner.produce(key, consumer, offset, length)

    def stat(self, key: str) -> Deferred[int]:
        return self.inner.stat(key)

    def delete(self, key: str) -> Deferred[None]:
        self.events.append("delete")
        return self.inner.delete(key)

    def check(self) -> Deferred[None]:
        return self.inner.check()

    def sweepTemporary(self, olderThan: float = 0.0) -> Deferred[list[str]]:
        return self.inner.sweepTemporary(olderThan)

    async def listKeys(
        self, olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        async with aclosing(self.inner.listKeys(olderThan, pageSize)) as inner:
            async for page in inner:
                self.events.append(f"page of {len(page)}")
                yield page


def test_eachPageIsSweptBeforeTheNextIsListed(service: Service) -> None:
    for _ in range(5):
        commit(service, orphanKey())
    store = Recording(service)
    service.run(sweepLeftovers(service.metadata, store, 0.0, pageSize=2))
    assert store.events == [
        "page of 2", "delete", "delete", "page of 2", "delete", "delete", "page of 1", "delete",
    ]  # fmt: skip


def test_aStoreThatCannotListIsLeftAlone(service: Service) -> None:
    """Nothing is asked of it (it would fail: it has nothing to answer with)."""
    assert not service.run(sweepLeftovers(service.metadata, cast(IBlobStore, object()), 0.0))


# Uploads, replacements, deletions and sweeps, interleaved at every store call


class Turns:
    """
    Every call into a store waits here for its turn, and the turns are
    handed out in a random order: any store call of any upload or sweep can
    come between any two of another's.
    """

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d

    def give(self) -> bool:
        """Let one waiting call go on; whether there was one."""
        if not self.waiting:
            return False
        self.waiting.pop(self.random.randrange(len(self.waiting))).callback(None)
        return True


class TurnedMetadata:
    """The memory metadata store, each call after its turn."""

    def __init__(self, inner: IMetadataStore, turns: Turns) -> None:
        self._inner = inner
        self._turns = turns
        self.owner = inner.owner

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._inner, name)

        async def afterItsTurn(*args: Any, **kwargs: Any) -> Any:
            await self._turns.wait()
            return await method(*args, **kwargs)

        return afterItsTurn


@implementer(IBlobWriter)
class TurnedWriter:
    def __init__(self, inner: IBlobWriter, turns: Turns) -> None:
        self.inner = inner
        self.key = inner.key
        self._turns = turns

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.inner.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.inner.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def started(self) -> Deferred[str | None]:
        return self.inner.started()

    def finish(self) -> Deferred[BlobInfo]:
        return self._turns.wait().addCallback(lambda _: self.inner.finish())

    def abort(self) -> Deferred[None]:
        return self._turns.wait().addCallback(lambda _: self.inner.abort())


@implementer(ISweepableBlobStore)
class TurnedBlobs(Recording):
    """The memory blob store, each call (and each page) after its turn."""

    def __init__(self, service: Service, turns: Turns) -> None:
        super().__init__(service)
        self._turns = turns

    def writer(self, key: str, size: int | None) -> IBlobWriter:
        return TurnedWriter(self.inner.writer(key, size), self._turns)

    def delete(self, key: str) -> Deferred[None]:
        return self._turns.wait().addCallback(lambda _: self.inner.delete(key))

    async def listKeys(
        self, olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        async with aclosing(self.inner.listKeys(olderThan, pageSize)) as inner:
            while True:
                await self._turns.wait()
                try:
                    page = await inner.__anext__()
                except StopAsyncIteration:
                    return
                yield page


PROBLEM = {"name": "p", "description": "d"}


@pytest.mark.parametrize("seed", range(60))
def test_theSweepNeverRemovesABlobARowOrALiveClaimPointsTo(service: Service, seed: int) -> None:
    """
    Uploads (claimed, blob committed, row not yet completed), replacements
    with and without a new uuid, a failed upload and a deletion run along
    sweeps of no grace at all, each store call of each a chance for any
    other's to come first; blobs with nothing pointing to them, as a crash
    leaves them, are there and keep arriving.  Every completed object keeps
    its blob, every orphan goes, and the keys that are not the service's stay.
    """
    turns = Turns(seed)
    blobs = TurnedBlobs(service, turns)
    metadata = cast(IMetadataStore, TurnedMetadata(service.metadata, turns))
    pool: Any = ImmediatePool()
    objects = Objects(metadata, blobs, reactor=service.reactor, pool=pool)
    problems = [put(service, "problem", b"p", text=PROBLEM) for _ in range(6)]
    gone = put(service, "data", b"deleted meanwhile")
    for key in FOREIGN:
        commit(service, key)
    orphans = [orphanKey(kind) for kind in KINDS]
    for key in orphans:
        commit(service, key)

    async def crashes() -> None:
        # What killed uploads leave: blobs no claim points to (any more).
        for _ in range(6):
            await turns.wait()
            orphans.append(orphanKey(turns.random.choice(KINDS)))
            commit(service, orphans[-1])

    async def failing() -> None:
        with pytest.raises(errors.SizeMismatch):
            await objects.put(NewObject("data", IncomingBlob(9)), Bytes(b"short"))

    async def replace(index: int, renamed: bool) -> None:
        change = Replacement(newUUID=newUUID() if renamed else None, blob=IncomingBlob(3))
        await objects.replace(problems[index], change, Bytes(b"new"))

    work: list[Coroutine[Any, Any, Any]] = [
        *(objects.put(NewObject("data", IncomingBlob(4)), Bytes(b"data")) for _ in range(4)),
        objects.put(NewObject("algo", IncomingBlob(1), text={"name": "a"}), Bytes(b"a")),
        *(replace(i, renamed=i % 2 == 0) for i in range(len(problems))),
        objects.remove("data", gone.uuid),
        failing(),
        crashes(),
    ]
    running = [ensureDeferred(w) for w in work]
    failures: list[Failure] = []
    for d in running:
        d.addErrback(failures.append)
    swept: list[int] = []

    async def sweeping(pageSize: int) -> None:
        while not all(d.called for d in running):
            swept.append((await sweepLeftovers(metadata, blobs, 0.0, pageSize)).orphans)

    # Sweeps of one page of everything as well as of short pages: many
    # chances to list a key and check it between any two steps of another.
    sweepers = [ensureDeferred(sweeping(size)) for size in (KEY_PAGE, KEY_PAGE, 2, 1)]
    for d in sweepers:
        d.addErrback(failures.append)
    for _ in range(100_000):
        if all(d.called for d in sweepers):
            break
        if not turns.give():
            service.reactor.advance(0)
    assert all(d.called for d in sweepers) and not failures, failures
    assert sum(swept) >= len(KINDS), "the sweeps ran along, and found the orphans"

    # What the last sweep did not see is swept now, on the stores themselves.
    service.run(sweepLeftovers(service.metadata, service.blobs, 0.0))
    rows = service.rows()
    assert [state for _, _, state in rows] == ["ready"] * (4 + 1 + len(problems))
    kept = set()
    for kind, uuid, _ in rows:
        stored = service.run(service.metadata.get(kind, uuid))
        assert stored is not None
        assert stored.blob_key in service.blobKeys(), (kind, uuid)
        kept.add(stored.blob_key)
    assert service.blobKeys() == sorted([*kept, *FOREIGN])
    assert not set(orphans) & set(service.blobKeys())


# What the remote stores' listings say


def test_theTimesOfTheStoresListingsAreRead() -> None:
    assert parseTime("2026-01-02T03:04:05.000Z") == 1767323045.0
    assert parseTime("2026-01-02T03:04:05.123456789Z") == pytest.approx(1767323045.123456789)
    assert parseTime("2026-01-02T05:04:05+02:00") == 1767323045.0
    for unreadable in (None, "", "yesterday", "2026-01-02", "2026-13-02T03:04:05Z"):
        assert parseTime(unreadable) is None


def test_anS3ListingGivesTheServiceKeysOldEnoughAndItsToken() -> None:
    token = "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
    old, young = orphanKey(), orphanKey()
    contents = "".join(
        f"<Contents><Key>{key}</Key><LastModified>{when}</LastModified></Contents>"
        for key, when in [
            (old, "2026-01-02T03:04:05.000Z"),
            (young, "2026-01-02T03:04:06.000Z"),
            ("data/readme.txt", "2020-01-01T00:00:00.000Z"),
            (orphanKey(), "not a time"),
        ]
    )
    body = (
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<IsTruncated>true</IsTruncated>{contents}"
        f"<NextContinuationToken>{token}</NextContinuationToken>"
        "</ListBucketResult>"
    ).encode()
    assert _s3.parseListing(body, 1767323045.5) == ([old], token)
    last = body.replace(b"<IsTruncated>true", b"<IsTruncated>false")
    assert _s3.parseListing(last, 1767323046.0) == ([old, young], None)


def test_aGCSListingGivesTheServiceKeysOldEnoughAndItsToken() -> None:
    old, recent = orphanKey(), orphanKey()
    items = [
        {"name": old, "updated": "2026-01-02T03:04:05.123Z", "timeCreated": "2026-01-02T03:04:05Z"},
        {"name": recent, "updated": "2026-01-02T03:05:00Z", "timeCreated": "2026-01-02T03:00:00Z"},
        {"name": "backups/all.tar", "updated": "2020-01-01T00:00:00Z"},
        {"name": orphanKey()},
    ]
    body = json.dumps({"items": items, "nextPageToken": "CgR0ZXN0"}).encode()
    assert _gcs.parseListing(body, 1767323060.0) == ([old], "CgR0ZXN0")
    assert _gcs.parseListing(body, 1767323100.0) == ([old, recent], "CgR0ZXN0")
    assert _gcs.parseListing(json.dumps({}).encode(), 1767323100.0) == ([], None)
