"""
The metadata store contract (L{IMetadataStore}), written once and run
against every implementation: L{PostgresMetadataStore} on a migrated
scratch database of an embedded PostgreSQL, and L{MemoryMetadataStore} on a
L{Clock}.  What the domain layer relies on holds for both, so the fast
tests above can use the memory store and mean it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import uuid4

import pytest
import pytest_twisted
from attrs import evolve, frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

from morpheo._errors import (
    ClaimLost,
    DatabaseError,
    InUse,
    NoSuchObject,
    NoSuchParent,
    NoSuchUpload,
    Taken,
    TooManyUploads,
    UploadBusy,
    UploadLost,
)
from morpheo._interfaces import IMetadataStore, IUploadMetadataStore
from morpheo._types import (
    BlobInfo,
    Change,
    Changed,
    Claim,
    Concat,
    Label,
    Listing,
    NewBlob,
    StoredObject,
    Upload,
)
from morpheo.metadata import Database, MemoryMetadataStore, PostgresMetadataStore
from morpheo.metadata._migrations import defaultMigrationsDir, loadMigrations, migrate

SHA = "0" * 64
#: Where the memory store's clock starts: a plausible time of now.
EPOCH = 1_767_000_000.0
#: Short enough to wait for on PostgreSQL's real clock.
STALE = 1.0


@frozen
class Backend:
    """
    One implementation under test, and what the suite needs of it besides
    the interface: another process's store on the same rows, time passing,
    the time of now, and the database going away.
    """

    store: IMetadataStore
    sibling: Callable[[str], IMetadataStore]
    elapse: Callable[[float], Awaitable[None]]
    now: Callable[[], float]
    goDown: Callable[[], None]
    comeBack: Callable[[], Awaitable[None]]


async def _postgres(dsn: str) -> tuple[Backend, Database]:
    db = Database(reactor, dsn)
    await db.start()
    await migrate(db, loadMigrations(defaultMigrationsDir()))

    async def elapse(seconds: float) -> None:
        await deferLater(reactor, seconds)

    backend = Backend(
        store=PostgresMetadataStore(db, owner="here"),
        sibling=lambda owner: PostgresMetadataStore(db, owner),
        elapse=elapse,
        now=time.time,
        goDown=db.close,
        comeBack=db.start,
    )
    return backend, db


def _memory() -> Backend:
    clock = Clock()
    clock.advance(EPOCH)
    store = MemoryMetadataStore(clock, owner="here")

    async def elapse(seconds: float) -> None:
        clock.advance(seconds)

    async def comeBack() -> None:
        store.comeBack()

    return Backend(
        store=store,
        sibling=store.sibling,
        elapse=elapse,
        now=clock.seconds,
        goDown=store.goDown,
        comeBack=comeBack,
    )


@pytest_twisted.async_yield_fixture(params=["postgres", "memory"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield _memory()
        return
    made, db = await _postgres(request.getfixturevalue("dsn"))
    try:
        yield made
    finally:
        db.close()


@pytest.fixture
def store(backend: Backend) -> IMetadataStore:
    return backend.store


def newUUID() -> str:
    return str(uuid4())


def tok(uuid: str) -> str:
    """The token the tests' claims of C{uuid} carry."""
    return f"token-{uuid}"


def claimOf(
    kind: str, uuid: str, text: dict[str, str] | None = None, parent: str | None = None
) -> Claim:
    return Claim(
        kind, uuid, blobKey=f"{kind}/{uuid}", token=tok(uuid), text=text or {}, parent=parent
    )


async def put(
    store: IMetadataStore,
    kind: str,
    text: dict[str, str] | None = None,
    parent: str | None = None,
    uuid: str | None = None,
) -> StoredObject:
    """Claim and complete an object: what an upload does to the store."""
    uuid = uuid or newUUID()
    await store.claim(claimOf(kind, uuid, text, parent))
    return await store.complete(kind, uuid, tok(uuid), BlobInfo(3, SHA))


async def uuids(
    store: IMetadataStore,
    kind: str,
    limit: int = 100,
    offset: int = 0,
    *,
    before: int | None = None,
    parent: str | None = None,
    namePrefix: str | None = None,
) -> list[str]:
    """The uuids a list shows, in its order."""
    found = await store.list(
        kind, Listing(limit, offset, before=before, parent=parent, namePrefix=namePrefix)
    )
    return [o.uuid for o in found]


def test_provides(store: IMetadataStore) -> None:
    assert verifyObject(IMetadataStore, store)
    assert store.owner == "here"


# Claims


@pytest_twisted.ensureDeferred
async def test_concurrentClaims(store: IMetadataStore) -> None:
    """
    Two uploads racing for one uuid (on two pool connections at once, for
    PostgreSQL): exactly one wins, the other fails with L{Taken} (a 409).
    """
    uid = newUUID()

    async def attempt() -> str:
        try:
            await store.claim(claimOf("data", uid))
        except Taken as e:
            assert (e.kind, e.uuid) == ("data", uid)
            return "taken"
        return "claimed"

    for _ in range(5):
        results = await gatherResults([Deferred.fromCoroutine(attempt()) for _ in range(2)])
        assert sorted(results) == ["claimed", "taken"]
        await store.release("data", uid, tok(uid))


@pytest_twisted.ensureDeferred
async def test_claimIsPerKind(store: IMetadataStore) -> None:
    """One uuid may name objects of different kinds: the key is (kind, uuid)."""
    uid = newUUID()
    await store.claim(claimOf("data", uid))
    await store.claim(claimOf("algo", uid, {"name": "a"}))
    with pytest.raises(Taken):
        await store.claim(claimOf("algo", uid, {"name": "b"}))


@pytest_twisted.ensureDeferred
async def test_releaseFreesTheUUID(store: IMetadataStore) -> None:
    """A failed upload gives its uuid back: the next claim of it succeeds."""
    uid = newUUID()
    await store.claim(claimOf("data", uid))
    with pytest.raises(Taken):
        await store.claim(claimOf("data", uid))
    await store.release("data", uid, tok(uid))
    await store.claim(claimOf("data", uid))


@pytest_twisted.ensureDeferred
async def test_releaseOfNothing(store: IMetadataStore) -> None:
    """Releasing a uuid nobody claimed is not an error."""
    await store.release("data", newUUID(), "no one's")


@pytest_twisted.ensureDeferred
async def test_releaseNeedsTheClaimsToken(store: IMetadataStore) -> None:
    """A release under another token (a lost claim's) leaves the claim alone."""
    uid = newUUID()
    await store.claim(claimOf("data", uid))
    await store.release("data", uid, "another claim's")
    with pytest.raises(Taken):
        await store.claim(claimOf("data", uid))
    await store.release("data", uid, tok(uid))
    await store.claim(claimOf("data", uid))


@pytest_twisted.ensureDeferred
async def test_releaseKeepsCompleted(store: IMetadataStore) -> None:
    """Release only frees a pending claim: it never deletes a stored object."""
    uid = newUUID()
    await store.claim(claimOf("data", uid))
    await store.complete("data", uid, tok(uid), BlobInfo(3, SHA))
    await store.release("data", uid, tok(uid))
    assert await store.get("data", uid) is not None
    with pytest.raises(Taken):
        await store.claim(claimOf("data", uid))


@pytest_twisted.ensureDeferred
async def test_pendingIsInvisible(store: IMetadataStore) -> None:
    """While its blob is being written an object is neither found nor listed."""
    uid = newUUID()
    await store.claim(claimOf("data", uid))
    assert await store.get("data", uid) is None
    assert await store.list("data", Listing(10, 0)) == []


@pytest_twisted.ensureDeferred
async def test_completeMakesVisible(backend: Backend) -> None:
    """
    Once complete, get and list return it with its size, sha256, text
    fields, the key its claim recorded and the time it completed.
    """
    store = backend.store
    uid = newUUID()
    sha = "ab" * 32
    await store.claim(
        Claim(
            "problem",
            uid,
            blobKey="blob-key",
            token=tok(uid),
            text={"name": "funky", "description": "great"},
            label=Label("application/zip", "p.zip"),
        )
    )
    before = backend.now()
    stored = await store.complete("problem", uid, tok(uid), BlobInfo(666, sha))
    after = backend.now()
    assert (stored.kind, stored.uuid, stored.size, stored.sha256) == ("problem", uid, 666, sha)
    assert (stored.name, stored.description) == ("funky", "great")
    assert stored.text == {"name": "funky", "description": "great"}
    assert stored.blob_key == "blob-key"
    assert (stored.content_type, stored.filename) == ("application/zip", "p.zip")
    assert isinstance(stored.timestamp_upload, int) and stored.timestamp_upload > 0
    assert int(before) <= stored.timestamp_upload <= int(after) + 1
    assert await store.get("problem", uid) == stored
    assert await store.list("problem", Listing(10, 0)) == [stored]
    assert await store.get("data", uid) is None


@pytest_twisted.ensureDeferred
async def test_textFieldsOfTheKind(store: IMetadataStore) -> None:
    """An object shows its kind's text fields (a missing one as None) and no others."""
    algo = await put(store, "algo", {"name": "a"})
    data = await put(store, "data")
    problem = await put(store, "problem", {"name": "p"})
    assert algo.text == {"name": "a"}
    assert data.text == {}
    assert problem.text == {"name": "p", "description": None}
    assert (data.parent, algo.parent) == (None, None)


@pytest_twisted.ensureDeferred
async def test_completeWithoutClaim(store: IMetadataStore) -> None:
    """A completion whose claim is gone is an error (a database one), not a silent no-op."""
    uid = newUUID()
    with pytest.raises(ClaimLost, match="claim") as caught:
        await store.complete("data", uid, tok(uid), BlobInfo(1, SHA))
    assert isinstance(caught.value, DatabaseError)
    assert (caught.value.kind, caught.value.uuid) == ("data", uid)


@pytest_twisted.ensureDeferred
async def test_completeTwice(store: IMetadataStore) -> None:
    """A claim completes once: the second completion finds no claim."""
    stored = await put(store, "data")
    with pytest.raises(ClaimLost):
        await store.complete("data", stored.uuid, tok(stored.uuid), BlobInfo(1, SHA))
    assert await store.get("data", stored.uuid) == stored


@pytest_twisted.ensureDeferred
async def test_uuidsAreUUIDs(store: IMetadataStore) -> None:
    """Another spelling of a uuid names the same object, shown in the canonical one."""
    uid = newUUID()
    stored = await put(store, "data", uuid=uid.upper())
    assert stored.uuid == uid
    assert await store.get("data", uid.upper()) == stored
    with pytest.raises(Taken):
        await store.claim(claimOf("data", uid))


# A model and its algo


@pytest_twisted.ensureDeferred
async def test_modelNeedsItsAlgo(store: IMetadataStore) -> None:
    """A model names an algo that exists: not a missing one, nor one still uploading."""
    algo = newUUID()
    model = newUUID()
    with pytest.raises(NoSuchParent) as missing:
        await store.claim(claimOf("model", model, parent=algo))
    assert (missing.value.kind, missing.value.uuid) == ("algo", algo)
    with pytest.raises(NoSuchParent):
        await store.claim(claimOf("model", model))

    await store.claim(claimOf("algo", algo, {"name": "a"}))
    with pytest.raises(NoSuchParent):
        await store.claim(claimOf("model", model, parent=algo))
    await store.complete("algo", algo, tok(algo), BlobInfo(3, SHA))

    stored = await put(store, "model", parent=algo, uuid=model)
    assert (stored.parent, stored.algo) == (algo, algo)
    assert stored.asJSON()["algo"] == algo
    assert await store.get("model", model) == stored


@pytest_twisted.ensureDeferred
async def test_parentFilter(store: IMetadataStore) -> None:
    """A list of models keeps those of one algo when asked."""
    first = await put(store, "algo", {"name": "first"})
    second = await put(store, "algo", {"name": "second"})
    ofFirst = [await put(store, "model", parent=first.uuid) for _ in range(2)]
    ofSecond = await put(store, "model", parent=second.uuid)
    assert await uuids(store, "model", parent=first.uuid) == [m.uuid for m in ofFirst[::-1]]
    assert await uuids(store, "model", parent=second.uuid) == [ofSecond.uuid]
    assert await uuids(store, "model", parent=newUUID()) == []
    assert len(await uuids(store, "model")) == 3


# Lists


@pytest_twisted.ensureDeferred
async def test_listNewestFirst(store: IMetadataStore) -> None:
    """
    Lists are newest first: in the order uploads completed, whatever the
    order they were claimed in (a claim is not an upload yet).
    """
    uids = [newUUID() for _ in range(4)]
    for uid in uids:
        await store.claim(claimOf("data", uid))
    for uid in [uids[1], uids[0], uids[2], uids[3]]:
        await store.complete("data", uid, tok(uid), BlobInfo(1, SHA))
    listed = await store.list("data", Listing(10, 0))
    assert [r.uuid for r in listed] == [uids[3], uids[2], uids[0], uids[1]]
    assert [r.seq for r in listed] == sorted((r.seq for r in listed), reverse=True)
    assert await uuids(store, "data", 2, 1) == [uids[2], uids[0]]
    # A cursor: only what completed before the given one.
    cursor = listed[1].seq
    assert await uuids(store, "data", 10, before=cursor) == [uids[0], uids[1]]
    assert await store.list("algo", Listing(10, 0)) == []


@pytest_twisted.ensureDeferred
async def test_pagesWhileItemsArrive(store: IMetadataStore) -> None:
    """
    Paging with C{before} cursors neither loses nor repeats an item while
    new ones complete between the pages; offsets count from the newest, so
    the same arrivals shift them.
    """
    first = [(await put(store, "data")).uuid for _ in range(5)]
    seen: list[str] = []
    page = await store.list("data", Listing(2))
    while page:
        seen.extend(o.uuid for o in page)
        await put(store, "data")
        page = await store.list("data", Listing(2, before=page[-1].seq))
    assert seen == first[::-1]

    newest = await uuids(store, "data")
    assert len(newest) == 5 + 3
    assert await uuids(store, "data", 2, 2) == newest[2:4]
    assert await uuids(store, "data", 10, 7) == newest[7:]
    assert await store.list("data", Listing(10, 8)) == []


@pytest_twisted.ensureDeferred
async def test_namePrefixIsLiteral(store: IMetadataStore) -> None:
    """A name prefix is matched as written: C{%}, C{_} and C{\\} are no wildcards."""
    names = ["a%b", "a_b", "axb", "ab", "a\\b", "ba"]
    byName = {name: (await put(store, "algo", {"name": name})).uuid for name in names}

    async def named(prefix: str) -> set[str]:
        found = await store.list("algo", Listing(100, namePrefix=prefix))
        return {o.uuid for o in found}

    assert await named("a%") == {byName["a%b"]}
    assert await named("a_") == {byName["a_b"]}
    assert await named("a\\") == {byName["a\\b"]}
    assert await named("a") == {byName[n] for n in names if n.startswith("a")}
    assert await named("") == set(byName.values())
    assert await named("A") == set()
    assert await named("zzz") == set()
    assert await store.list("data", Listing(10, namePrefix="a")) == []


# Deletion


@pytest_twisted.ensureDeferred
async def test_deleteMissing(store: IMetadataStore) -> None:
    """Only a ready object is deleted: a missing or still uploading one is not there."""
    uid = newUUID()
    with pytest.raises(NoSuchObject) as caught:
        await store.delete("data", uid)
    assert (caught.value.kind, caught.value.uuid) == ("data", uid)
    await store.claim(claimOf("data", uid))
    with pytest.raises(NoSuchObject):
        await store.delete("data", uid)
    with pytest.raises(Taken):
        await store.claim(claimOf("data", uid))


@pytest_twisted.ensureDeferred
async def test_deleteReturnsTheRow(store: IMetadataStore) -> None:
    """A deletion hands back the row (its blob key for the caller); then it is gone."""
    stored = await put(store, "data")
    assert await store.delete("data", stored.uuid) == stored
    assert await store.get("data", stored.uuid) is None
    assert await store.list("data", Listing(10)) == []
    with pytest.raises(NoSuchObject):
        await store.delete("data", stored.uuid)
    await store.claim(claimOf("data", stored.uuid))


@pytest_twisted.ensureDeferred
async def test_algoInUse(store: IMetadataStore) -> None:
    """
    An algo that models use is kept, naming (up to 20 of) them in the order
    they were made; a model still uploading counts.  Once the models are
    deleted, so can the algo be.
    """
    algo = await put(store, "algo", {"name": "a"})
    models = [await put(store, "model", parent=algo.uuid) for _ in range(21)]
    with pytest.raises(InUse) as caught:
        await store.delete("algo", algo.uuid)
    assert (caught.value.kind, caught.value.uuid) == ("algo", algo.uuid)
    assert caught.value.children == tuple(m.uuid for m in models[:20])
    for model in models:
        await store.delete("model", model.uuid)

    uploading = newUUID()
    await store.claim(claimOf("model", uploading, parent=algo.uuid))
    with pytest.raises(InUse) as caught:
        await store.delete("algo", algo.uuid)
    assert caught.value.children == (uploading,)
    await store.release("model", uploading, tok(uploading))

    assert await store.delete("algo", algo.uuid) == algo
    assert await store.get("algo", algo.uuid) is None


# Changes


@pytest_twisted.ensureDeferred
async def test_renameConsumesTheClaim(backend: Backend) -> None:
    """
    A rename moves the object to a uuid claimed first: the claim becomes the
    object (no claim left to sweep), the old uuid is free, the rest stays.
    """
    store = backend.store
    stored = await put(store, "problem", {"name": "p", "description": "d"})
    new = newUUID()
    await store.claim(Claim("problem", new, blobKey=None, token=tok(new)))
    changed = await store.change(
        "problem", stored.uuid, Change(newUUID=new, claimed=(new, tok(new)))
    )
    assert changed == Changed(
        evolve(stored, uuid=new),
        None,
    )
    assert await store.get("problem", new) == changed.object
    assert await store.get("problem", stored.uuid) is None
    assert await store.takeDeadClaims(0.0, mine=True) == []
    with pytest.raises(Taken):
        await store.claim(claimOf("problem", new))
    await store.claim(claimOf("problem", stored.uuid))


@pytest_twisted.ensureDeferred
async def test_changeText(store: IMetadataStore) -> None:
    """New text fields replace the old ones named; the others, and the blob, stay."""
    stored = await put(store, "problem", {"name": "p", "description": "d"})
    changed = await store.change("problem", stored.uuid, Change(text={"name": "q"}))
    assert changed.oldBlobKey is None
    assert changed.object.text == {"name": "q", "description": "d"}
    assert (changed.object.uuid, changed.object.blob_key) == (stored.uuid, stored.blob_key)
    assert await store.get("problem", stored.uuid) == changed.object
    assert await uuids(store, "problem", namePrefix="q") == [stored.uuid]


@pytest_twisted.ensureDeferred
async def test_changeBlob(store: IMetadataStore) -> None:
    """A new blob replaces the old, whose key is handed back to be deleted."""
    stored = await put(store, "problem", {"name": "p"})
    blob = NewBlob("problem/new", BlobInfo(7, "cd" * 32), Label("text/plain", "p.txt"))
    changed = await store.change(
        "problem", stored.uuid, Change(text={"description": "d"}, blob=blob)
    )
    assert changed.oldBlobKey == stored.blob_key
    now = changed.object
    assert (now.size, now.sha256, now.blob_key) == (7, "cd" * 32, "problem/new")
    assert (now.content_type, now.filename) == ("text/plain", "p.txt")
    assert now.text == {"name": "p", "description": "d"}
    assert (now.seq, now.timestamp_upload) == (stored.seq, stored.timestamp_upload)
    assert await store.get("problem", stored.uuid) == now
    assert await store.referencedKeys([stored.blob_key, "problem/new"]) == {"problem/new"}


@pytest_twisted.ensureDeferred
async def test_changeAllAtOnce(store: IMetadataStore) -> None:
    """A rename, text and a blob in one change."""
    stored = await put(store, "problem", {"name": "p"})
    new = newUUID()
    await store.claim(Claim("problem", new, blobKey=None, token=tok(new)))
    blob = NewBlob("problem/b", BlobInfo(1, SHA))
    changed = await store.change(
        "problem",
        stored.uuid,
        Change(newUUID=new, claimed=(new, tok(new)), text={"name": "n"}, blob=blob),
    )
    assert changed.oldBlobKey == stored.blob_key
    assert (changed.object.uuid, changed.object.name, changed.object.blob_key) == (
        new,
        "n",
        "problem/b",
    )
    assert await store.list("problem", Listing(10)) == [changed.object]


@pytest_twisted.ensureDeferred
async def test_aNewBlobIsHeldByAClaimTheChangeConsumes(store: IMetadataStore) -> None:
    """
    While a new blob is written for an object, a claim of a uuid of its own
    points to it (a sweep sees the key referenced); the change that puts the
    blob in place consumes that claim, and fails if it was lost.
    """
    stored = await put(store, "problem", {"name": "p"})
    holder = newUUID()
    await store.claim(Claim("problem", holder, blobKey="problem/new", token=tok(holder)))
    assert await store.referencedKeys(["problem/new"]) == {"problem/new"}
    with pytest.raises(ClaimLost):
        await store.change(
            "problem",
            stored.uuid,
            Change(blob=NewBlob("problem/new", BlobInfo(1, SHA)), claimed=(holder, "another's")),
        )
    assert await store.get("problem", stored.uuid) == stored
    changed = await store.change(
        "problem",
        stored.uuid,
        Change(blob=NewBlob("problem/new", BlobInfo(1, SHA)), claimed=(holder, tok(holder))),
    )
    assert (changed.object.uuid, changed.object.blob_key) == (stored.uuid, "problem/new")
    assert await store.takeDeadClaims(0.0, mine=True) == []
    assert await store.referencedKeys(["problem/new"]) == {"problem/new"}


@pytest_twisted.ensureDeferred
async def test_changeOfNothing(store: IMetadataStore) -> None:
    """A change of an object that is gone (or never completed) fails, changing nothing."""
    uid = newUUID()
    with pytest.raises(NoSuchObject) as caught:
        await store.change("problem", uid, Change(text={"name": "n"}))
    assert (caught.value.kind, caught.value.uuid) == ("problem", uid)
    await store.claim(claimOf("problem", uid, {"name": "p"}))
    with pytest.raises(NoSuchObject):
        await store.change("problem", uid, Change(text={"name": "n"}))
    stored = await store.complete("problem", uid, tok(uid), BlobInfo(3, SHA))
    assert stored.name == "p"


@pytest_twisted.ensureDeferred
async def test_renameOntoAnObject(store: IMetadataStore) -> None:
    """A rename onto a uuid another object has fails, changing nothing."""
    stored = await put(store, "problem", {"name": "p"})
    other = await put(store, "problem", {"name": "o"})
    with pytest.raises(DatabaseError):
        await store.change("problem", stored.uuid, Change(newUUID=other.uuid, text={"name": "n"}))
    assert await store.list("problem", Listing(10)) == [other, stored]


# What the database refuses


@pytest_twisted.ensureDeferred
async def test_schemaChecks(store: IMetadataStore) -> None:
    """
    A name longer than its column, a digest that is not one, a ready row
    without a blob key: refused as the database failing, and a refused
    completion leaves the claim to complete.
    """
    with pytest.raises(DatabaseError):
        await store.claim(claimOf("algo", newUUID(), {"name": "n" * 256}))
    uid = newUUID()
    await store.claim(claimOf("data", uid))
    with pytest.raises(DatabaseError):
        await store.complete("data", uid, tok(uid), BlobInfo(3, "not a digest"))
    with pytest.raises(DatabaseError):
        await store.complete("data", uid, tok(uid), BlobInfo(-1, SHA))
    assert (await store.complete("data", uid, tok(uid), BlobInfo(3, SHA))).uuid == uid
    keyless = newUUID()
    await store.claim(Claim("data", keyless, blobKey=None, token=tok(keyless)))
    with pytest.raises(DatabaseError):
        await store.complete("data", keyless, tok(keyless), BlobInfo(3, SHA))
    taken = await store.takeDeadClaims(0.0, mine=True)
    assert [(d.kind, d.uuid, d.blobKey) for d in taken] == [("data", keyless, None)]


# Sweeps


@pytest_twisted.ensureDeferred
async def test_takeDeadClaims(backend: Backend) -> None:
    """
    A claim is dead once nobody has refreshed it for a lease, whoever made
    it; a heartbeat refreshes the claims its tokens hold, and a completed
    upload is no claim.  A dead claim is taken over under a new token, so
    that a second sweep does not take it too.
    """
    store, other = backend.store, backend.sibling("there")
    mine, theirs, done = newUUID(), newUUID(), newUUID()
    await store.claim(claimOf("data", mine))
    await other.claim(Claim("algo", theirs, blobKey=None, token=tok(theirs), text={"name": "t"}))
    await put(store, "data", uuid=done)

    assert await store.takeDeadClaims(60.0) == []
    await backend.elapse(STALE * 1.5)
    assert await other.heartbeat([tok(theirs), tok(done), "nobody's"]) == {tok(theirs)}
    taken = await store.takeDeadClaims(STALE)
    assert [(d.kind, d.uuid, d.blobKey) for d in taken] == [("data", mine, f"data/{mine}")]
    assert taken[0].token != tok(mine)
    # Taken over is refreshed: not taken again (a lease well above the
    # time these statements take, however loaded the machine).
    assert await store.takeDeadClaims(60.0) == []
    assert await other.takeDeadClaims(60.0) == []

    await store.release("data", mine, taken[0].token)
    await store.claim(claimOf("data", mine))


@pytest_twisted.ensureDeferred
async def test_takenClaimsAreFenced(backend: Backend) -> None:
    """
    Once a claim is taken over, its first holder (a process that only
    stalled) can neither complete, release nor refresh it: the row is
    the sweep's, and whatever claims the uuid next.
    """
    store, stalled = backend.store, backend.sibling("stalled")
    uid, renamed = newUUID(), newUUID()
    await stalled.claim(claimOf("data", uid))
    target = await put(stalled, "problem", {"name": "p"})
    await stalled.claim(Claim("problem", renamed, blobKey=None, token=tok(renamed)))
    await backend.elapse(STALE * 1.5)
    taken = {d.uuid: d for d in await store.takeDeadClaims(STALE)}
    assert set(taken) == {uid, renamed}

    assert await stalled.heartbeat([tok(uid), tok(renamed)]) == set()
    with pytest.raises(ClaimLost) as caught:
        await stalled.complete("data", uid, tok(uid), BlobInfo(3, SHA))
    assert (caught.value.kind, caught.value.uuid) == ("data", uid)
    with pytest.raises(ClaimLost):
        await stalled.change(
            "problem", target.uuid, Change(newUUID=renamed, claimed=(renamed, tok(renamed)))
        )
    assert await store.get("problem", target.uuid) == target
    await stalled.release("data", uid, tok(uid))
    with pytest.raises(Taken):
        await store.claim(claimOf("data", uid))

    # The sweep frees the uuid; the next upload's claim cannot be touched
    # by the stalled one either.
    await store.release("data", uid, taken[uid].token)
    await claimAgain(store, uid)
    with pytest.raises(ClaimLost):
        await stalled.complete("data", uid, tok(uid), BlobInfo(3, SHA))
    stored = await store.complete("data", uid, "next", BlobInfo(3, SHA))
    assert stored.uuid == uid


async def claimAgain(store: IMetadataStore, uid: str) -> None:
    """Claim C{uid} again, under the token C{"next"}: another upload."""
    await store.claim(Claim("data", uid, blobKey=f"data/{uid}-next", token="next"))


@pytest_twisted.ensureDeferred
async def test_aNotedUploadGoesWithItsDeadClaim(backend: Backend) -> None:
    """
    The handle an upload noted in its claim comes with the claim when it
    is taken over, and again when a sweep that failed to remove what it
    names leaves the claim to the next one; a claim without a note has none.
    """
    store, killed = backend.store, backend.sibling("killed")
    noted, bare = newUUID(), newUUID()
    session = "https://storage.googleapis.com/upload/storage/v1/b/b/o?upload_id=x"
    await killed.claim(claimOf("data", noted))
    await killed.noteUpload("data", noted, tok(noted), session)
    await killed.claim(claimOf("data", bare))
    await backend.elapse(STALE * 1.5)
    taken = {d.uuid: d for d in await store.takeDeadClaims(STALE)}
    assert (taken[noted].handle, taken[bare].handle) == (session, None)
    assert taken[noted].blobKey == f"data/{noted}"

    await backend.elapse(STALE * 1.5)
    again = {d.uuid: d for d in await backend.sibling("next").takeDeadClaims(STALE)}
    assert (again[noted].handle, again[bare].handle) == (session, None)
    for dead in again.values():
        await store.release("data", dead.uuid, dead.token)
    # The next upload of the uuid starts without one.
    await claimAgain(store, noted)
    assert [d.handle for d in await store.takeDeadClaims(0.0, mine=True)] == [None]


@pytest_twisted.ensureDeferred
async def test_aNoteNeedsTheClaimsToken(backend: Backend) -> None:
    """
    Only the claim's holder notes its upload: under another token, on a
    uuid not (or no longer) claimed, on a completed object, or once the
    claim is taken over, the note fails with L{ClaimLost} and changes nothing.
    """
    store = backend.store
    uid, stored = newUUID(), await put(store, "data")
    await store.claim(claimOf("data", uid))
    for kind, uuid, token in [
        ("data", uid, "another claim's"),
        ("algo", uid, tok(uid)),
        ("data", newUUID(), tok(uid)),
        ("data", stored.uuid, tok(stored.uuid)),
    ]:
        with pytest.raises(ClaimLost) as caught:
            await store.noteUpload(kind, uuid, token, "wrong")
        assert (caught.value.kind, caught.value.uuid) == (kind, uuid)
    await store.noteUpload("data", uid, tok(uid), "first")
    await store.noteUpload("data", uid, tok(uid), "right")
    [taken] = await store.takeDeadClaims(0.0, mine=True)
    with pytest.raises(ClaimLost):
        await store.noteUpload("data", uid, tok(uid), "too late")
    [again] = await store.takeDeadClaims(0.0, mine=True)
    assert (taken.handle, again.handle) == ("right", "right")
    assert await store.get("data", stored.uuid) == stored


@pytest_twisted.ensureDeferred
async def test_takeMineAtStart(backend: Backend) -> None:
    """At start-up every claim of this owner is a dead run's, fresh or not; no other's."""
    store, other = backend.store, backend.sibling("there")
    mine, theirs = newUUID(), newUUID()
    await store.claim(claimOf("data", mine))
    await other.claim(claimOf("data", theirs))
    taken = await store.takeDeadClaims(60.0, mine=True)
    assert [(d.kind, d.uuid, d.blobKey) for d in taken] == [("data", mine, f"data/{mine}")]
    assert await other.heartbeat([tok(theirs)]) == {tok(theirs)}


@pytest_twisted.ensureDeferred
async def test_referencedKeys(store: IMetadataStore) -> None:
    """The keys rows point to, ready or still uploading; not those nothing uses."""
    ready = await put(store, "data")
    pending = newUUID()
    await store.claim(claimOf("data", pending))
    keys = [ready.blob_key, f"data/{pending}", "data/nothing"]
    assert await store.referencedKeys(keys) == {ready.blob_key, f"data/{pending}"}
    assert await store.referencedKeys([]) == set()
    await store.delete("data", ready.uuid)
    await store.release("data", pending, tok(pending))
    assert await store.referencedKeys(keys) == set()


# A database that is down


@pytest_twisted.ensureDeferred
async def test_down(backend: Backend) -> None:
    """
    A store answers its readiness check while its database is there; once
    it is gone, every call fails with L{DatabaseError}; when it is back, so
    are its rows, unchanged.
    """
    store = backend.store
    stored = await put(store, "problem", {"name": "p"})
    await store.ping()
    backend.goDown()
    uid = stored.uuid
    calls: list[Callable[[], Awaitable[object]]] = [
        store.ping,
        lambda: store.claim(claimOf("data", newUUID())),
        lambda: store.release("problem", uid, tok(uid)),
        lambda: store.complete("problem", uid, tok(uid), BlobInfo(1, SHA)),
        lambda: store.get("problem", uid),
        lambda: store.list("problem", Listing(10)),
        lambda: store.delete("problem", uid),
        lambda: store.change("problem", uid, Change(text={"name": "n"})),
        lambda: store.noteUpload("problem", uid, tok(uid), "a session"),
        lambda: store.heartbeat([tok(uid)]),
        lambda: store.takeDeadClaims(0.0),
        lambda: store.referencedKeys([stored.blob_key]),
    ]
    for call in calls:
        with pytest.raises(DatabaseError):
            await call()
    await backend.comeBack()
    await store.ping()
    assert await store.get("problem", uid) == stored


# Resumable uploads (IUploadMetadataStore)


def uploads(backend: Backend) -> IUploadMetadataStore:
    store = backend.store
    assert IUploadMetadataStore.providedBy(store)
    return store


def uploadOf(uuid: str | None, owner: str = "alice", length: int | None = 10) -> Upload:
    from secrets import token_urlsafe

    return Upload(
        id=token_urlsafe(16),
        owner=owner,
        blobKey=f"data/{uuid or newUUID()}",
        state='{"file": "x"}',
        expires=0.0,
        kind=None if uuid is None else "data",
        uuid=uuid,
        token=None if uuid is None else tok(uuid),
        length=length,
        concat=Concat.PARTIAL if uuid is None else Concat.NONE,
        metadata={"filename": "a.bin"},
    )


def test_providesUploads(store: IMetadataStore) -> None:
    assert verifyObject(IUploadMetadataStore, store)


@pytest_twisted.ensureDeferred
async def test_anUploadClaimsItsUUIDAndCompletesAtOnce(backend: Backend) -> None:
    store = uploads(backend)
    uuid = newUUID()
    upload = uploadOf(uuid)
    made = await store.openUpload(upload, claimOf("data", uuid), None, 3600)
    assert made.expires == pytest.approx(backend.now() + 3600, abs=5)
    assert made.metadata == {"filename": "a.bin"} and made.offset == 0
    with pytest.raises(Taken):
        await store.openUpload(uploadOf(uuid), claimOf("data", uuid), None, 3600)
    assert await store.get("data", uuid) is None
    await store.takeUpload(upload.id, "alice", "busy-1", 60)
    recorded = await store.recordUpload(upload.id, "busy-1", "s2", 10, None, False, 3600)
    assert (recorded.offset, recorded.state, recorded.length) == (10, "s2", 10)
    await store.takeUpload(upload.id, "alice", "busy-2", 60)
    done = await store.finishUpload(upload.id, "busy-2", BlobInfo(10, SHA))
    assert done.uuid == uuid and done.size == 10
    assert await store.get("data", uuid) == done
    assert await store.getUpload(upload.id) is None


@pytest_twisted.ensureDeferred
async def test_anUploadIsItsOwnersAndHasOneRequestAtATime(backend: Backend) -> None:
    store = uploads(backend)
    upload = await store.openUpload(uploadOf(None), None, None, 3600)
    with pytest.raises(NoSuchUpload):
        await store.takeUpload(upload.id, "mallory", "busy-m", 60)
    with pytest.raises(NoSuchUpload):
        await store.takeUpload("no-such-upload-id-at-all", "alice", "busy-m", 60)
    await store.takeUpload(upload.id, "alice", "busy-1", STALE)
    sibling = backend.sibling("elsewhere")
    assert IUploadMetadataStore.providedBy(sibling)
    with pytest.raises(UploadBusy):
        await sibling.takeUpload(upload.id, "alice", "busy-2", 60)
    assert await store.refreshUploads(["busy-1", "busy-x"], STALE) == {"busy-1"}
    # A dead node's lease runs out.
    await backend.elapse(STALE + 0.5)
    await sibling.takeUpload(upload.id, "alice", "busy-2", 60)
    with pytest.raises(UploadLost):
        await store.recordUpload(upload.id, "busy-1", "s", 5, None, False, 3600)
    await store.leaveUpload(upload.id, "busy-1")  # not its own: nothing
    with pytest.raises(UploadBusy):
        await store.takeUpload(upload.id, "alice", "busy-3", 60)
    await store.leaveUpload(upload.id, "busy-2")
    await store.takeUpload(upload.id, "alice", "busy-3", 60)


@pytest_twisted.ensureDeferred
async def test_aDeferredLengthIsRecordedOnce(backend: Backend) -> None:
    store = uploads(backend)
    upload = await store.openUpload(uploadOf(None, length=None), None, None, 3600)
    assert upload.length is None
    await store.takeUpload(upload.id, "alice", "b1", 60)
    recorded = await store.recordUpload(upload.id, "b1", "s", 4, 8, False, 3600)
    assert recorded.length == 8
    await store.takeUpload(upload.id, "alice", "b2", 60)
    recorded = await store.recordUpload(upload.id, "b2", "s", 8, None, True, 3600)
    assert (recorded.length, recorded.offset, recorded.concluded) == (8, 8, True)


@pytest_twisted.ensureDeferred
async def test_openUploadsPerOwnerAreLimited(backend: Backend) -> None:
    store = uploads(backend)
    owner = f"user-{newUUID()}"
    for _ in range(2):
        await store.openUpload(uploadOf(None, owner), None, 2, 3600)
    uuid = newUUID()
    with pytest.raises(TooManyUploads):
        await store.openUpload(uploadOf(uuid, owner), claimOf("data", uuid), 2, 3600)
    # Nothing was claimed by the refused one.
    await store.claim(claimOf("data", uuid))
    await store.openUpload(uploadOf(None, f"other-{owner}"), None, 2, 3600)


@pytest_twisted.ensureDeferred
async def test_anUploadsClaimIsNeverTakenForDeadButItsKeyIsReferenced(backend: Backend) -> None:
    store = uploads(backend)
    uuid = newUUID()
    upload = await store.openUpload(uploadOf(uuid), claimOf("data", uuid), None, 3600)
    partial = await store.openUpload(uploadOf(None), None, None, 3600)
    await backend.elapse(STALE + 0.5)
    dead = await backend.sibling("sweeper").takeDeadClaims(STALE)
    assert uuid not in [d.uuid for d in dead]
    assert uuid not in [d.uuid for d in await store.takeDeadClaims(STALE, mine=True)]
    keys = [upload.blobKey, partial.blobKey, "data/unknown"]
    assert await store.referencedKeys(keys) == {upload.blobKey, partial.blobKey}


@pytest_twisted.ensureDeferred
async def test_expiredUploadsAreTakenOnceThenDroppedWithTheirClaims(backend: Backend) -> None:
    store = uploads(backend)
    uuid = newUUID()
    upload = await store.openUpload(uploadOf(uuid), claimOf("data", uuid), None, STALE)
    busy = await store.openUpload(uploadOf(None), None, None, STALE)
    await store.takeUpload(busy.id, "alice", "live", 600)
    await backend.elapse(STALE + 0.5)
    assert await store.getUpload(upload.id) is None
    with pytest.raises(NoSuchUpload):
        await store.takeUpload(upload.id, "alice", "late", 60)
    taken = await store.takeExpiredUploads("sweep-1", 60)
    ids = [u.id for u in taken]
    assert upload.id in ids and busy.id not in ids
    assert upload.id not in [u.id for u in await store.takeExpiredUploads("sweep-2", 60)]
    await store.dropUpload(upload.id, "sweep-2")  # not its lease: nothing
    await store.dropUpload(upload.id, "sweep-1")
    # The uuid is free again.
    await store.claim(claimOf("data", uuid))
