"""
The domain layer on its own, without HTTP: L{Objects} over the in-memory
stores, with its typed outcomes, and the sweep of what dead uploads left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from morpheo import IBlobWriter, StoredObject
from morpheo import _errors as errors
from morpheo._interfaces import IBlobSource, IBlobStore, IMetadataStore
from morpheo._types import BlobInfo, Claim, Listing
from morpheo.objects import CLAIM_LEASE, COMMIT_GRACE, IncomingBlob, NewObject, Replacement, sweep

from .harness import Bytes, Service, newUUID, put


def test_putThenGetGivesTheStoredObject(service: Service) -> None:
    stored = put(service, "algo", b"abc", text={"name": "a"})
    assert stored.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert service.run(service.objects.get("algo", stored.uuid)) == stored
    assert stored.name == "a"


def test_getOfNothingIsNoSuchObject(service: Service) -> None:
    with pytest.raises(errors.NoSuchObject):
        service.run(service.objects.get("data", newUUID()))


def test_aTakenUUIDIsTakenAndTheSourceStopped(service: Service) -> None:
    stored = put(service, "data", b"abc")
    source = Bytes(b"xyz")
    new = NewObject(kind="data", blob=IncomingBlob(3), uuid=stored.uuid)
    with pytest.raises(errors.Taken):
        service.run(service.objects.put(new, source))
    assert source.stopped


def test_aModelOfNoAlgoIsNoSuchParent(service: Service) -> None:
    with pytest.raises(errors.NoSuchParent):
        put(service, "model", b"m", parent=newUUID())
    service.assertNothingLeft()


@pytest.mark.parametrize(("data", "size"), [(b"ab", 3), (b"abcd", 3)])
def test_aBlobNotOfItsSizeIsSizeMismatchAndKeepsNothing(
    service: Service, data: bytes, size: int
) -> None:
    with pytest.raises(errors.SizeMismatch):
        put(service, "data", data, blob=IncomingBlob(size))
    service.assertNothingLeft()


def test_aWrongDigestIsDigestMismatchAndKeepsNothing(service: Service) -> None:
    expected = {"sha256": hashlib.sha256(b"other").digest()}
    with pytest.raises(errors.DigestMismatch):
        put(service, "data", b"abc", blob=IncomingBlob(3, expected))
    expected = {"md5": hashlib.md5(b"other").digest()}
    with pytest.raises(errors.DigestMismatch):
        put(service, "data", b"abc", blob=IncomingBlob(3, expected))
    service.assertNothingLeft()


def test_admitRefusesWhatIsOverTheMaximum() -> None:
    service = Service(maxBlobSize=10)
    service.objects.admit(10)
    service.objects.admit(None)
    with pytest.raises(errors.TooLarge):
        service.objects.admit(11)
    service.objects.admit(1000, overhead=990)


def test_removeOfAnAlgoWithModelsIsInUse(service: Service) -> None:
    algo = put(service, "algo", b"a", text={"name": "a"})
    model = put(service, "model", b"m", parent=algo.uuid)
    with pytest.raises(errors.InUse) as excinfo:
        service.run(service.objects.remove("algo", algo.uuid))
    assert excinfo.value.children == (model.uuid,)
    assert service.run(service.objects.remove("model", model.uuid)) == model
    service.run(service.objects.remove("algo", algo.uuid))
    service.assertNothingLeft()


def test_replaceRenamesChangesTextAndBlob(service: Service) -> None:
    current = put(service, "problem", b"old", text={"name": "n", "description": "d"})
    new = newUUID()
    change = Replacement(newUUID=new, text={"name": "m"}, blob=IncomingBlob(3))
    changed = service.run(service.objects.replace(current, change, Bytes(b"new")))
    assert (changed.uuid, changed.name, changed.description) == (new, "m", "d")
    assert changed.sha256 == hashlib.sha256(b"new").hexdigest()
    assert len(service.blobKeys()) == 1
    assert len(service.rows()) == 1


@pytest.mark.parametrize("renamed", [False, True])
def test_aReplacementBlobIsClaimedBeforeItIsWritten(service: Service, renamed: bool) -> None:
    """
    With a rename or without, something points to the new blob's key from
    before its first byte (the sweep of unreferenced blobs relies on it),
    and nothing is left pending afterwards.
    """
    current = put(service, "problem", b"old", text={"name": "n", "description": "d"})
    seen: list[set[str]] = []

    class Watched(Bytes):
        def streamTo(self, writer: IBlobWriter) -> None:
            seen.append(service.run(service.metadata.referencedKeys([writer.key])))
            super().streamTo(writer)

    change = Replacement(newUUID=newUUID() if renamed else None, blob=IncomingBlob(3))
    changed = service.run(service.objects.replace(current, change, Watched(b"new")))
    assert seen == [{changed.blob_key}]
    assert service.rows() == [("problem", changed.uuid, "ready")]
    assert service.blobKeys() == [changed.blob_key]


def test_replaceOfAnObjectGoneMeanwhileIsVanished(service: Service) -> None:
    current = put(service, "problem", b"old", text={"name": "n", "description": "d"})
    service.run(service.objects.remove("problem", current.uuid))
    change = Replacement(newUUID=newUUID(), blob=IncomingBlob(3))
    with pytest.raises(errors.Vanished):
        service.run(service.objects.replace(current, change, Bytes(b"new")))
    service.assertNothingLeft()


def test_listGivesPagesAndWhetherMoreFollow(service: Service) -> None:
    stored = [put(service, "data", b"x") for _ in range(3)][::-1]
    first = service.run(service.objects.list("data", Listing(2)))
    assert (first.items, first.more) == (stored[:2], True)
    rest = service.run(service.objects.list("data", Listing(2, before=first.items[-1].seq)))
    assert (rest.items, rest.more) == (stored[2:], False)


def test_theSweepFreesDeadClaimsAndWhatTheyWrote(service: Service) -> None:
    """A claim whose heartbeat stopped is a dead upload's: released, its blob removed."""
    dead = service.metadata.sibling("a dead process")
    uuid = newUUID()
    service.run(dead.claim(Claim("data", uuid, "data/dead-key", token="dead")))
    writer = service.blobs.writer("data/dead-key", 1)
    writer.write(b"x")
    service.run(writer.finish())
    live = newUUID()
    service.run(service.metadata.claim(Claim("data", live, "data/live-key", token="live")))
    service.reactor.advance(CLAIM_LEASE + 1)
    service.run(service.metadata.heartbeat(["live"]))
    swept = service.run(sweep(service.metadata, service.blobs))
    assert swept.claims == 1
    assert "data/dead-key" not in service.blobKeys()
    assert service.rows() == [("data", live, "pending")]


def test_theSweepAtStartTakesEveryClaimOfThisOwner(service: Service) -> None:
    service.run(service.metadata.claim(Claim("data", newUUID(), "data/k", token="t")))
    assert service.run(service.objects.sweep(atStart=True)).claims == 1
    service.assertNothingLeft()


def test_aFreshClaimOfAnotherProcessIsKept(service: Service) -> None:
    other = service.metadata.sibling("a live process")
    uuid = newUUID()
    service.run(other.claim(Claim("data", uuid, None, token="t")))
    assert service.run(service.objects.sweep()).claims == 0
    assert service.rows() == [("data", uuid, "pending")]


def test_theMemoryStoresAndTheSourceProvideTheirInterfaces(service: Service) -> None:
    assert verifyObject(IMetadataStore, service.metadata)
    assert verifyObject(IBlobStore, service.blobs)
    assert verifyObject(IBlobSource, Bytes(b""))


def problem(service: Service) -> StoredObject:
    return put(service, "problem", b"old", text={"name": "p", "description": "d"})


def test_replaceOntoATakenUUIDIsTakenStopsTheSourceAndChangesNothing(service: Service) -> None:
    current, other = problem(service), problem(service)
    before = service.snapshot()
    source = Bytes(b"new")
    change = Replacement(newUUID=other.uuid, blob=IncomingBlob(3))
    with pytest.raises(errors.Taken):
        service.run(service.objects.replace(current, change, source))
    assert source.stopped
    service.assertNothingLeft(before)


def test_replaceWithABlobShortOfItsSizeLeavesTheObjectAsItWas(service: Service) -> None:
    current = problem(service)
    before = service.snapshot()
    change = Replacement(newUUID=newUUID(), text={"name": "q"}, blob=IncomingBlob(10))
    with pytest.raises(errors.SizeMismatch):
        service.run(service.objects.replace(current, change, Bytes(b"new")))
    service.assertNothingLeft(before)
    assert service.run(service.objects.get("problem", current.uuid)) == current


def test_putWhileAStoreIsDownFailsTypedAndLeavesNothing(service: Service) -> None:
    service.metadata.goDown()
    with pytest.raises(errors.DatabaseError):
        put(service, "data", b"abc")
    service.metadata.comeBack()
    service.blobs.down = True
    with pytest.raises(errors.BlobStoreError):
        put(service, "data", b"abc")
    service.assertNothingLeft()


def test_readyReportsWhyEachStoreCannotBeUsed(service: Service) -> None:
    assert service.run(service.objects.ready()) == {"database": None, "blobstore": None}
    service.metadata.goDown("gone")
    service.blobs.down = True
    report = service.run(service.objects.ready())
    assert isinstance(report["database"], errors.DatabaseError)
    assert str(report["database"]) == "gone"
    assert isinstance(report["blobstore"], errors.BlobStoreError)


def test_aPutCancelledWhileItsBlobIsCommittedWaitsForTheCommit(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The client goes while its blob is being committed (a remote store's
    last request in flight).  The commit's outcome is waited for, not
    abandoned: the blob committed is the object's, stored and served, and
    no blob is left that no row points to.
    """
    commits: list[Callable[[], None]] = []
    writer = service.blobs.writer

    def slowly(key: str, size: int | None) -> IBlobWriter:
        made = writer(key, size)
        finish = made.finish

        def held() -> Deferred[BlobInfo]:
            # Committed at once, answered when the test says.
            committed, answer = finish(), Deferred[BlobInfo]()

            def answered() -> None:
                committed.chainDeferred(answer)

            commits.append(answered)
            return answer

        monkeypatch.setattr(made, "finish", held)
        return made

    monkeypatch.setattr(service.blobs, "writer", slowly)
    uuid = newUUID()
    new = NewObject(kind="data", blob=IncomingBlob(3), uuid=uuid)
    outcome: list[object] = []
    putting = Deferred.fromCoroutine(service.objects.put(new, Bytes(b"abc")))
    putting.addBoth(outcome.append)
    service.flush()
    assert len(commits) == 1 and not outcome
    putting.cancel()
    commits[0]()
    service.flush()
    [stored] = outcome
    assert isinstance(stored, StoredObject)
    assert service.rows() == [("data", uuid, "ready")]
    assert service.blobKeys() == [stored.blob_key]
    assert service.run(service.objects.get("data", uuid)) == stored


def test_aCommitStillUnansweredAGraceAfterItsClientWentIsAborted(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A stalled store never answers the commit of a client that went away:
    the commit is waited for a grace period, then aborted, and nothing is
    left (neither the claim nor the blob).
    """
    writer = service.blobs.writer

    def stalled(key: str, size: int | None) -> IBlobWriter:
        made = writer(key, size)
        monkeypatch.setattr(made, "finish", Deferred)
        return made

    monkeypatch.setattr(service.blobs, "writer", stalled)
    new = NewObject(kind="data", blob=IncomingBlob(3), uuid=newUUID())
    outcome: list[object] = []
    putting = Deferred.fromCoroutine(service.objects.put(new, Bytes(b"abc")))
    putting.addBoth(outcome.append)
    service.flush()
    putting.cancel()
    service.reactor.advance(COMMIT_GRACE - 1)
    service.flush()
    assert not outcome and service.rows() != []
    service.reactor.advance(1)
    service.flush()
    [failure] = outcome
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    service.assertNothingLeft()
