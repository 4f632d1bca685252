# -*- test-case-name: tests.unit.test_orphans,tests.unit.test_sweeper,tests.integration.test_orphans -*-  # noqa: E501
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
blobs, on a timer of their own).

A claim is a lease: its process refreshes it every third of
L{CLAIM_LEASE}, and any live process's sweep takes over one not refreshed
for a whole lease, so a killed node's uuid is free within two leases.  The
takeover gives the claim a new token first, so a process that was only
stalled (SIGSTOP, a frozen database link) finds its claim gone when it
wakes: it cannot complete, release or refresh it, and removes only the blob
it wrote itself.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._errors import DatabaseError
from .._interfaces import (
    KEY_PAGE,
    IAbandonableBlobStore,
    IBlobStore,
    IMetadataStore,
    ISweepableBlobStore,
)
from .._kinds import isBlobKey

if TYPE_CHECKING:
    from ._lifecycle import Objects
    from ._resumable import Resumable

#: A claim not refreshed for this long (seconds) belongs to a dead process.
CLAIM_LEASE = 60.0
#: Leftovers younger than this may belong to a live upload: kept (the
#: default of C{--orphan-grace}).
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
    grace: float = LEFTOVER_AGE,
    leftovers: bool = True,
) -> Swept:
    """
    Sweep once.  At start, every claim of this owner and every leftover are
    its dead predecessor's; later only claims older than C{lease}.
    Leftovers (with C{leftovers}) are those older than C{grace} seconds, at
    start too on a store other processes share (a bucket, a shared directory).
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
    left = Swept(0, 0, 0)
    if leftovers:
        left = await sweepLeftovers(metadata, store, 0.0 if atStart and not store.shared else grace)
    swept = Swept(len(claims), left.temporary, left.orphans)
    if swept:
        _log.info(
            "swept {claims} dead claims, {temporary} temporary files and {orphans}"
            " unreferenced blobs",
            claims=swept.claims,
            temporary=swept.temporary,
            orphans=swept.orphans,
        )
    return swept


async def sweepLeftovers(
    metadata: IMetadataStore, store: IBlobStore, olderThan: float, pageSize: int = KEY_PAGE
) -> Swept:
    """
    Remove what writes left in C{store} more than C{olderThan} seconds
    ago: unfinished writes, and committed blobs under the service's keys
    that no row and no claim points to.  Nothing on a store that cannot
    list what it holds.

    The keys come a page at a time; each page is checked against the
    metadata store once listed, and its unreferenced keys are deleted
    before the next page is fetched.  That order is what makes it safe.
    A key is fresh for every write, never used again, and claimed (a
    pending row points to it) before a byte of its blob is written; the
    reference then passes from the claim to the row in one transaction,
    and ends only when the claim is released, or the row deleted or given
    another blob.  A blob
    is listed only once committed, so after its claim: a listed key that
    nothing points to when checked, after the listing, has lost its
    reference for good and is a true orphan, even if rows arrived between
    the listing and the check (they point to other keys).  References read
    before the listing would not do: a key claimed after them would be
    taken for an orphan.
    """
    if not ISweepableBlobStore.providedBy(store):
        return Swept(0, 0, 0)
    temporary = await store.sweepTemporary(olderThan)
    orphans = 0
    async with aclosing(store.listKeys(olderThan, pageSize)) as pages:
        async for page in pages:
            ours = [key for key in page if isBlobKey(key)]
            referenced = await metadata.referencedKeys(ours)
            for key in ours:
                if key not in referenced:
                    await store.delete(key)
                    orphans += 1
    return Swept(0, len(temporary), orphans)


def leftoverInterval(grace: float) -> float:
    """How often leftovers are swept: every half grace period, from 1 s to 30 minutes."""
    return min(max(grace / 2, 1.0), 1800.0)


class Sweeper(Service):
    """
    Every third of the claim lease: refresh the claims of this process's
    uploads (and the busy leases of its resumable uploads' requests), sweep
    the expired resumable uploads, and the claims dead processes left.  On a timer of its
    own, every half grace period (L{leftoverInterval}): sweep the leftovers
    older than the grace period.
    """

    def __init__(
        self, objects: Objects, clock: IReactorTime, uploads: Resumable | None = None
    ) -> None:
        self._objects = objects
        self._uploads = uploads
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self.interval = objects.claimLease / 3
        self._grace = objects.orphanGrace
        self._leftovers = LoopingCall(self._sweepLeftovers)
        self._leftovers.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: _log.failure("the sweeper stopped", f)
        )
        self._startLeftovers()

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._stopLeftovers()

    async def _run(self) -> None:
        await self._objects.keepAlive()
        if self._uploads is not None:
            # The busy leases of this process's appends, then the uploads
            # that expired (what they wrote, their claims).
            await self._uploads.keepAlive()
            await self._uploads.sweep()
        await self._objects.sweep(leftovers=False)

    def _tick(self) -> Deferred[None]:
        # A failed sweep is logged and tried again.
        return Deferred.fromCoroutine(self._run()).addErrback(_sweepFailed)

    # Leftovers (unfinished writes, unreferenced blobs): a timer of their
    # own, set by the grace period alone, whatever the claims' tick does.

    def _startLeftovers(self) -> None:
        self._leftovers.start(leftoverInterval(self._grace), now=False).addErrback(
            lambda f: _log.failure("the sweep of leftovers stopped", f)
        )

    def _stopLeftovers(self) -> None:
        if self._leftovers.running:
            self._leftovers.stop()

    def _sweepLeftovers(self) -> Deferred[None]:
        async def run() -> None:
            swept = await sweepLeftovers(self._objects.metadata, self._objects.blobs, self._grace)
            if swept:
                _log.info(
                    "swept {temporary} temporary files and {orphans} unreferenced blobs",
                    temporary=swept.temporary,
                    orphans=swept.orphans,
                )

        return Deferred.fromCoroutine(run()).addErrback(_sweepFailed)


def _sweepFailed(f: Failure) -> None:
    if f.check(DatabaseError):
        # The database is down: said where it failed, one line here.
        _log.warn("sweeping failed; trying again later: {e}", e=str(f.value))
    else:
        _log.failure("sweeping failed; trying again later", f)
