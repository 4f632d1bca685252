"""
The L{Sweeper} on the memory stores and the clock: it keeps this process's
claims alive while it runs, sweeps what dead processes left once their
claims are stale, and tries again after the database failed.
"""

from __future__ import annotations

from morpheo._types import BlobInfo, Claim
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import STALE_CLAIM, SWEEP_INTERVAL, Sweeper, blobKey, sweep

from .harness import Service, newUUID

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
