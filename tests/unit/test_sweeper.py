"""
The L{Sweeper} on the memory stores and the clock: it keeps this process's
claims alive while it runs, sweeps what dead processes left once their
claims are stale, sweeps the leftovers older than the grace period on a
timer of their own, and tries again after the database failed.
"""

from __future__ import annotations

import pytest

from morpheo._types import BlobInfo, Claim
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import (
    LEFTOVER_AGE,
    STALE_CLAIM,
    SWEEP_INTERVAL,
    Sweeper,
    blobKey,
    leftoverInterval,
    sweep,
)

from .harness import Service, newUUID, put

#: Enough sweeps for any claim left alone to go stale.
STALE_SWEEPS = int(STALE_CLAIM / SWEEP_INTERVAL) + 2


def claimWithBlob(service: Service, metadata: MemoryMetadataStore) -> Claim:
    """A claim of C{metadata}'s process whose blob it had committed."""
    uuid = newUUID()
    claim = Claim("data", uuid, blobKey("data", uuid))
    service.run(metadata.claim(claim))
    assert claim.blobKey is not None
    writer = service.blobs.writer(claim.blobKey, 4)
    writer.write(b"left")
    service.run(writer.finish())
    return claim


def running(service: Service) -> Sweeper:
    sweeper = Sweeper(service.metadata, service.blobs, service.reactor)
    sweeper.startService()
    return sweeper


def test_theSweeperKeepsItsOwnClaimsAliveAndSweepsTheDead(service: Service) -> None:
    mine = claimWithBlob(service, service.metadata)
    claimWithBlob(service, service.metadata.sibling("dead"))
    sweeper = running(service)
    for _ in range(STALE_SWEEPS):
        service.advance(SWEEP_INTERVAL)
    sweeper.stopService()
    assert service.rows() == [("data", mine.uuid, "pending")]
    assert service.blobKeys() == [mine.blobKey]


def test_aClaimIsKeptWhileItsProcessHeartbeats(service: Service) -> None:
    live = service.metadata.sibling("live")
    kept = claimWithBlob(service, live)
    for _ in range(STALE_SWEEPS):
        service.advance(SWEEP_INTERVAL)
        service.run(live.heartbeat())
    assert not service.run(sweep(service.metadata, service.blobs))
    assert service.rows() == [("data", kept.uuid, "pending")]


def test_theSweeperTriesAgainAfterTheDatabaseFailed(service: Service) -> None:
    claimWithBlob(service, service.metadata.sibling("dead"))
    service.advance(STALE_CLAIM + 1)
    service.metadata.goDown()
    sweeper = running(service)
    service.advance(SWEEP_INTERVAL)
    assert len(service.rows()) == 1
    service.metadata.comeBack()
    service.advance(SWEEP_INTERVAL)
    sweeper.stopService()
    service.assertNothingLeft()


def test_aStoppedSweeperLeavesNoTimer(service: Service) -> None:
    sweeper = running(service)
    assert service.reactor.getDelayedCalls()
    sweeper.stopService()
    assert not service.reactor.getDelayedCalls()


def test_aReadyObjectIsNeverSwept(service: Service) -> None:
    claim = claimWithBlob(service, service.metadata)
    service.run(service.metadata.complete("data", claim.uuid, BlobInfo(4, "0" * 64)))
    service.advance(STALE_CLAIM * 10)
    assert not service.run(service.objects.sweep(atStart=True))
    assert service.rows() == [("data", claim.uuid, "ready")]
    assert service.blobKeys() == [claim.blobKey]


# Leftovers: their own timer, by the grace period


def sweeperWithGrace(service: Service, grace: float) -> Sweeper:
    sweeper = Sweeper(service.metadata, service.blobs, service.reactor, grace=grace)
    sweeper.startService()
    return sweeper


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
    service.advance(SWEEP_INTERVAL)
    assert service.blobKeys() == [old]
    service.advance(leftoverInterval(LEFTOVER_AGE) - SWEEP_INTERVAL)
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
