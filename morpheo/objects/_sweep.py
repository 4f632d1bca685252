# -*- test-case-name: tests.integration.test_recovery,tests.unit.test_objects_domain -*-
"""
What a crash leaves behind, and how it is swept.

A process killed mid-upload leaves a claim (the uuid looks taken), maybe
a temporary file, maybe a committed blob no row points to.  None of it is
ever visible (rows are read only once complete, blobs only through their
row), but all of it is swept: at start, everything the previous run of
this data directory left; then periodically, what any dead process left
(claims whose heartbeat stopped, old temporary files and unreferenced
blobs).
"""

from __future__ import annotations

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._errors import DatabaseError
from .._interfaces import IAbandonableBlobStore, IBlobStore, IMetadataStore, ISweepableBlobStore

#: A claim not refreshed for this long belongs to a dead process.
STALE_CLAIM = 300.0
#: How often claims are refreshed and leftovers swept.
SWEEP_INTERVAL = 60.0
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


async def sweep(metadata: IMetadataStore, store: IBlobStore, *, atStart: bool = False) -> Swept:
    """
    Sweep once.  At start, every claim of this owner and every leftover are
    its dead predecessor's; later only stale ones are swept.
    """
    claims = await metadata.deadClaims(STALE_CLAIM, mine=atStart)
    for dead in claims:
        # What the dead upload wrote goes first: were the claim released
        # first, a failure here would leave it with nothing to find it by.
        if dead.blobKey is not None:
            if IAbandonableBlobStore.providedBy(store):
                await store.abandon(dead.blobKey)
            else:
                await store.delete(dead.blobKey)
        await metadata.release(dead.kind, dead.uuid)
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
    Every C{interval} seconds: refresh this process's claims, and sweep
    what dead processes left.
    """

    def __init__(
        self,
        metadata: IMetadataStore,
        store: IBlobStore,
        clock: IReactorTime,
        interval: float = SWEEP_INTERVAL,
    ) -> None:
        self._metadata = metadata
        self._store = store
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: _log.failure("the sweeper stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    async def _run(self) -> None:
        await self._metadata.heartbeat()
        await sweep(self._metadata, self._store)

    def _tick(self) -> Deferred[None]:
        # A failed sweep is logged and tried again.
        return Deferred.fromCoroutine(self._run()).addErrback(_sweepFailed)


def _sweepFailed(f: Failure) -> None:
    if f.check(DatabaseError):
        # The database is down: said where it failed, one line here.
        _log.warn("sweeping failed; trying again later: {e}", e=str(f.value))
    else:
        _log.failure("sweeping failed; trying again later", f)
