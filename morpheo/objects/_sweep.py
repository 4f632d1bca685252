# -*- test-case-name: tests.integration.test_recovery,tests.unit.test_objects_domain -*-
"""
What a crash leaves behind, and how it is swept.

A process killed mid-upload leaves a claim (the uuid looks taken), maybe
a temporary file, an unfinished upload in a remote store (an S3 multipart
upload, found by its key; a GCS resumable session, found only by the
handle its upload recorded in the claim), maybe a committed blob no row
points to.  None of it is ever visible (rows are read only once complete,
blobs only through their row), but all of it is swept: at start,
everything the previous run of this data directory left; then
periodically, what any dead process left (claims whose heartbeat stopped,
with what their uploads wrote; old temporary files and unreferenced
blobs).

A claim is a lease: its process refreshes it every third of
L{CLAIM_LEASE}, and any live process's sweep takes over one not refreshed
for a whole lease, so a killed node's uuid is free within two leases.  The
takeover gives the claim a new token first, so a process that was only
stalled (SIGSTOP, a frozen database link) finds its claim gone when it
wakes: it cannot complete, release or refresh it, and removes only the blob
it wrote itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .._interfaces import IAbandonableBlobStore, IBlobStore, IMetadataStore, ISweepableBlobStore

if TYPE_CHECKING:
    from ._lifecycle import Objects

#: A claim not refreshed for this long (seconds) belongs to a dead process.
CLAIM_LEASE = 60.0
#: Leftovers younger than this may belong to a live upload: kept.
LEFTOVER_AGE = 3600.0

_log = Logger()


@frozen
class Swept:
    """What one sweep removed."""

    claims: int
    temporary: int
    orphans: int

    def __bool__(self) -> bool:
        return bool(self.claims or self.temporary or self.orphans)


async def sweep(
    metadata: IMetadataStore,
    store: IBlobStore,
    lease: float = CLAIM_LEASE,
    *,
    atStart: bool = False,
) -> Swept:
    """
    Sweep once.  At start, every claim of this owner and every leftover are
    its dead predecessor's; later only those older than C{lease}.
    """
    claims = await metadata.takeDeadClaims(lease, mine=atStart)
    for dead in claims:
        # What the dead upload wrote goes first: were the claim released
        # first, a failure here would leave it with nothing to find it by.
        if dead.blobKey is not None:
            if IAbandonableBlobStore.providedBy(store):
                await store.abandon(dead.blobKey, dead.handle)
            else:
                await store.delete(dead.blobKey)
        await metadata.release(dead.kind, dead.uuid, dead.token)
    temporary: list[str] = []
    orphans: list[str] = []
    if ISweepableBlobStore.providedBy(store):
        age = 0.0 if atStart else LEFTOVER_AGE
        temporary = await store.sweepTemporary(age)
        keys = await store.listKeys(age)
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            referenced = await metadata.referencedKeys(batch)
            for key in batch:
                if key not in referenced:
                    await store.delete(key)
                    orphans.append(key)
    swept = Swept(len(claims), len(temporary), len(orphans))
    if swept:
        _log.info(
            "swept {claims} dead claims, {temporary} temporary files and {orphans}"
            " unreferenced blobs",
            claims=swept.claims,
            temporary=swept.temporary,
            orphans=swept.orphans,
        )
    return swept


class Sweeper(Service):
    """
    Every third of the claim lease: refresh the claims of this process's
    uploads, and sweep what dead processes left.
    """

    def __init__(self, objects: Objects, clock: IReactorTime) -> None:
        self._objects = objects
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self.interval = objects.claimLease / 3

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: _log.failure("the sweeper stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    async def _run(self) -> None:
        await self._objects.keepAlive()
        await self._objects.sweep()

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._run())
        # A failed sweep (the database is down) is logged and tried again.
        d.addErrback(lambda f: _log.failure("sweeping failed; trying again later", f))
        return d
