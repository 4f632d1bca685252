"""
Claims as leases, on the memory stores and the clock: the L{Sweeper} keeps
the claims of this process's uploads alive while they run, and takes over
and sweeps the claims nobody refreshed for a lease (what they wrote goes
with them).  A process that only stalled finds its claim gone when it wakes:
its upload fails with 503 and removes only what it wrote itself.  A release
that failed is tried again until it succeeds. Leftovers older than the grace
period are swept on a timer of their own.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import ensureDeferred

from morpheo._errors import ClaimLost
from morpheo._types import BlobInfo, Claim
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import (
    CLAIM_LEASE,
    LEFTOVER_AGE,
    IncomingBlob,
    NewObject,
    Objects,
    Replacement,
    Sweeper,
    blobKey,
    leftoverInterval,
    sweep,
)

from .harness import Connection, ImmediatePool, Service, Trickle, newUUID, put
from .test_interrupted import finish
from .test_objects_domain import Bytes


def claimWithBlob(service: Service, metadata: MemoryMetadataStore) -> Claim:
    """A claim of C{metadata}'s process whose blob it had committed."""
    uuid = newUUID()
    claim = Claim("data", uuid, blobKey("data", uuid), token=f"token-{uuid}")
    service.run(metadata.claim(claim))
    assert claim.blobKey is not None
    writer = service.blobs.writer(claim.blobKey, 4)
    writer.write(b"left")
    service.run(writer.finish())
    return claim


def running(service: Service, objects: Objects | None = None) -> Sweeper:
    sweeper = Sweeper(objects or service.objects, service.reactor)
    sweeper.startService()
    return sweeper


def leasesPass(service: Service, leases: float) -> None:
    """Let C{leases} claim leases pass, a sweeper's tick at a time."""
    step = service.objects.claimLease / 3
    for _ in range(int(leases * 3)):
        service.advance(step)


def test_theSweeperKeepsItsUploadsAliveAndSweepsTheDeadWithinTwoLeases() -> None:
    # A lease shorter than the connections' idle timeout.
    service = Service(claimLease=9.0)
    uploading = newUUID()
    connection = service.startUpload("data", uploading)
    dead = claimWithBlob(service, service.metadata.sibling("dead"))
    sweeper = running(service)
    leasesPass(service, 2)
    assert service.rows() == [("data", uploading, "pending")]
    assert dead.blobKey not in service.blobKeys()
    assert finish(connection, "data", uploading) == 201
    sweeper.stopService()
    assert service.rows() == [("data", uploading, "ready")]


def test_aClaimIsKeptWhileItsProcessHeartbeats(service: Service) -> None:
    live = service.metadata.sibling("live")
    kept = claimWithBlob(service, live)
    for _ in range(6):
        service.advance(CLAIM_LEASE / 2)
        assert service.run(live.heartbeat([kept.token])) == {kept.token}
    assert not service.run(sweep(service.metadata, service.blobs))
    assert service.rows() == [("data", kept.uuid, "pending")]


def test_aClaimThatIsNotRefreshedIsSweptAfterOneLease(service: Service) -> None:
    claimWithBlob(service, service.metadata.sibling("gone"))
    service.advance(CLAIM_LEASE - 1)
    assert not service.run(service.objects.sweep())
    service.advance(2)
    assert service.run(service.objects.sweep()).claims == 1
    service.assertNothingLeft()


def test_theLeaseIsTheObjectsOwn(service: Service) -> None:
    objects = Objects(
        service.metadata,
        service.blobs,
        reactor=service.reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
        claimLease=5.0,
    )
    claimWithBlob(service, service.metadata.sibling("gone"))
    sweeper = running(service, objects)
    assert sweeper.interval == pytest.approx(5.0 / 3)
    for _ in range(7):
        service.advance(sweeper.interval)
    sweeper.stopService()
    service.assertNothingLeft()


def stalledPeer(service: Service) -> tuple[Objects, MemoryMetadataStore]:
    """Another node on the same rows and blobs, whose sweeper never runs."""
    metadata = service.metadata.sibling("stalled")
    objects = Objects(
        metadata,
        service.blobs,
        reactor=service.reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
    )
    return objects, metadata


def test_aNodeStalledPastItsLeaseCannotTouchTheUploadThatReplacedIt(service: Service) -> None:
    """
    A node stalls mid-upload past its lease; another node's sweep frees the
    uuid and the client sends it again there; the stalled node wakes, its
    upload fails with L{ClaimLost}, and the second upload stays intact.
    """
    stalled, _ = stalledPeer(service)
    uuid = newUUID()
    body = Trickle(b"", b"stale")
    first = ensureDeferred(stalled.put(NewObject("data", IncomingBlob(5), uuid=uuid), body))
    service.settle()
    assert not first.called
    service.advance(CLAIM_LEASE + 1)
    assert service.run(service.objects.sweep()).claims == 1
    assert service.blobKeys() == []

    again = service.upload("data", b"fresh", uuid=uuid)
    assert again.code == 201
    body.arrive()
    with pytest.raises(ClaimLost):
        service.run(first)
    stored = json.loads(service.request("GET", f"/data/{uuid}").body)
    assert stored["sha256"] == json.loads(again.body)["sha256"]
    assert service.request("GET", f"/data/{uuid}/blob").body == b"fresh"
    assert len(service.blobKeys()) == 1


def test_aReplacementStalledPastItsLeaseChangesNothing(service: Service) -> None:
    """
    The new blob of a change is held by a claim while it is written: a
    process that stalls past its lease has it swept with its blob, and its
    change then fails, leaving the object as it was.
    """
    stalled, _ = stalledPeer(service)
    current = service.run(
        service.objects.put(
            NewObject("problem", IncomingBlob(3), text={"name": "p"}), Bytes(b"old")
        )
    )
    body = Trickle(b"", b"new")
    change = ensureDeferred(stalled.replace(current, Replacement(blob=IncomingBlob(3)), body))
    service.settle()
    # The object, and the claim that holds its new blob.
    assert sorted(state for _, _, state in service.rows()) == ["pending", "ready"]
    service.advance(CLAIM_LEASE + 1)
    assert service.run(service.objects.sweep()).claims == 1
    body.arrive()
    with pytest.raises(ClaimLost):
        service.run(change)
    assert service.run(service.objects.get("problem", current.uuid)) == current
    assert service.blobKeys() == [current.blob_key]
    assert service.rows() == [("problem", current.uuid, "ready")]


def test_aStalledUploadsClientIsTold503() -> None:
    """The documented answer to an upload that outlived its claim."""
    service = Service(claimLease=9.0)
    uuid = newUUID()
    connection: Connection = service.startUpload("data", uuid)
    # Nothing refreshes the claim (no sweeper runs here): the process
    # "stalled", and another node's sweep takes the claim over.
    service.advance(10)
    other = service.metadata.sibling("another node")
    swept = service.run(sweep(other, service.blobs, 9.0))
    assert swept.claims == 1
    assert finish(connection, "data", uuid) == 503
    reply = connection.received.split(b"\r\n\r\n", 1)[1]
    assert b"took longer than its claim's lease" in reply
    service.assertNothingLeft()


def failedRelease(service: Service) -> str:
    """An upload whose store and database fail at once: its claim cannot be given back."""
    uuid = newUUID()
    connection = service.startUpload("data", uuid)
    service.blobs.down = True
    service.metadata.goDown()
    assert finish(connection, "data", uuid) == 500
    service.blobs.down = False
    service.metadata.comeBack()
    assert service.rows() == [("data", uuid, "pending")]
    return uuid


def test_aFailedReleaseIsTriedAgainAtTheNextSweep(service: Service) -> None:
    failedRelease(service)
    sweeper = running(service)
    service.advance(sweeper.interval)
    sweeper.stopService()
    service.assertNothingLeft()


def test_theClaimOfAFailedReleaseIsNoLongerKeptAlive(service: Service) -> None:
    """Even if this process never reached the database again, the claim would expire."""
    failedRelease(service)
    service.run(service.objects.keepAlive())
    service.advance(CLAIM_LEASE + 1)
    assert service.run(sweep(service.metadata.sibling("another node"), service.blobs)).claims == 1
    service.assertNothingLeft()


def test_aStoppedSweeperLeavesNoTimer(service: Service) -> None:
    sweeper = running(service)
    assert service.reactor.getDelayedCalls()
    sweeper.stopService()
    assert not service.reactor.getDelayedCalls()


def test_aReadyObjectIsNeverSwept(service: Service) -> None:
    claim = claimWithBlob(service, service.metadata)
    service.run(service.metadata.complete("data", claim.uuid, claim.token, BlobInfo(4, "0" * 64)))
    service.advance(CLAIM_LEASE * 10)
    assert not service.run(service.objects.sweep(atStart=True))
    assert service.rows() == [("data", claim.uuid, "ready")]
    assert service.blobKeys() == [claim.blobKey]


def test_theSweeperTriesAgainAfterTheDatabaseFailed(service: Service) -> None:
    claimWithBlob(service, service.metadata.sibling("dead"))
    service.advance(CLAIM_LEASE + 1)
    service.metadata.goDown()
    sweeper = running(service)
    service.advance(sweeper.interval)
    assert len(service.rows()) == 1
    service.metadata.comeBack()
    service.advance(sweeper.interval)
    sweeper.stopService()
    service.assertNothingLeft()


# Leftovers: their own timer, by the grace period


def sweeperWithGrace(service: Service, grace: float) -> Sweeper:
    objects = Objects(
        service.metadata,
        service.blobs,
        reactor=service.reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
        orphanGrace=grace,
    )
    return running(service, objects)


def orphan(service: Service) -> str:
    """A committed blob of the service's shape that nothing points to."""
    key = blobKey("data", newUUID())
    writer = service.blobs.writer(key, 6)
    writer.write(b"orphan")
    service.run(writer.finish())
    return key


@pytest.mark.parametrize(
    ("grace", "interval"),
    [(0.0, 1.0), (0.5, 1.0), (2.0, 1.0), (120.0, 60.0), (3600.0, 1800.0), (86400.0, 1800.0)],
)
def test_leftoversAreSweptEveryHalfGraceFromASecondToHalfAnHour(
    grace: float, interval: float
) -> None:
    assert leftoverInterval(grace) == interval


def test_leftoversGoOnTheirOwnTimerOnceOlderThanTheGrace(service: Service) -> None:
    kept = put(service, "data", b"kept")
    young = orphan(service)
    sweeper = sweeperWithGrace(service, 10.0)
    service.advance(5)
    assert service.blobKeys() == sorted([kept.blob_key, young])
    service.advance(5)  # long before the claims' first tick
    sweeper.stopService()
    assert service.blobKeys() == [kept.blob_key]


def test_theClaimsTickLeavesLeftoversToTheirTimer(service: Service) -> None:
    old = orphan(service)
    service.advance(LEFTOVER_AGE * 2)
    sweeper = sweeperWithGrace(service, LEFTOVER_AGE)
    service.advance(sweeper.interval)
    assert service.blobKeys() == [old]
    service.advance(leftoverInterval(LEFTOVER_AGE) - sweeper.interval)
    sweeper.stopService()
    assert service.blobKeys() == []


def test_theLeftoversAreTriedAgainAfterTheDatabaseFailed(service: Service) -> None:
    key = orphan(service)
    sweeper = sweeperWithGrace(service, 2.0)
    service.metadata.goDown()
    service.advance(3)
    assert service.blobKeys() == [key]
    service.metadata.comeBack()
    service.advance(1)
    sweeper.stopService()
    assert service.blobKeys() == []


def test_aSweeperToldToLeaveLeftoversToAnotherKeepsTheClaimsAlone(service: Service) -> None:
    """The workers of C{--workers} share a store: all but one leave its leftovers."""
    key = orphan(service)
    objects = Objects(
        service.metadata,
        service.blobs,
        reactor=service.reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
        orphanGrace=2.0,
    )
    sweeper = Sweeper(objects, service.reactor, leftovers=False)
    sweeper.startService()
    claim = claimWithBlob(service, service.metadata.sibling("dead"))
    leasesPass(service, 2)
    sweeper.stopService()
    assert service.blobKeys() == [key]
    # The dead process's claim (and what it wrote) went all the same.
    assert claim.blobKey not in service.blobKeys()
