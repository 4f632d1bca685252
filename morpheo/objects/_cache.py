# -*- test-case-name: tests.unit.test_cache -*-
"""
What a node keeps in memory of the objects it serves most: their records
(L{RecordCache}) and their small blobs (L{BlobCache}).  A small GET is then
answered without a database round trip or a trip to the store, which is
most of what it costs.

A record may change on any node, or under the service (an operator's
C{UPDATE}): the records are kept only while the database's notifications
of changes are heard (L{morpheo.metadata.ChangeListener}), each for a
bounded time whatever happens.  A blob never changes under its key (every
write has a fresh one, see L{morpheo.objects.blobKey}), so a blob is kept
as long as there is room; it is only ever served for a record read first.
"""

from __future__ import annotations

from cachetools import LRUCache, TTLCache
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from .._interfaces import IChangeObserver
from .._metrics import Metrics
from .._types import StoredObject

#: How many records a node keeps, at most.
RECORDS = 10_000
#: How long a record is kept, at most, in seconds: the bound on what a node
#: could serve of a record changed elsewhere should the database's
#: notifications stop without the link to it breaking (they come within
#: milliseconds otherwise).
RECORD_LIFETIME = 10.0
#: The largest blob kept in memory, in bytes; larger ones are streamed.
LARGEST_BLOB = 64 * 1024


@implementer(IChangeObserver)
class RecordCache:
    """
    Ready records by kind and uuid, kept while the changes are heard.

    A reader notes L{mark} before it asks the database and gives it back
    with what it found (L{keep}): a record is kept only if no change was
    heard in between, so a change that crosses a read is never lost.
    Nothing is kept, nor served, while the changes are not heard (before
    L{listening}, after L{deaf}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        size: int = RECORDS,
        lifetime: float = RECORD_LIFETIME,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._records: TTLCache[tuple[str, str], StoredObject] = TTLCache(
            size, lifetime, timer=clock.seconds
        )
        self._heard = False
        self._changes = 0
        metrics = Metrics() if metrics is None else metrics
        self._hit, self._miss = (metrics.cacheReads["records", o] for o in ("hit", "miss"))
        self._heardGauge = metrics.changesHeard

    @property
    def heard(self) -> bool:
        """Whether the changes are heard now, so records are kept."""
        return self._heard

    def get(self, kind: str, uuid: str) -> StoredObject | None:
        """The record kept of C{kind} C{uuid}, if any."""
        found = self._records.get((kind, uuid))
        (self._miss if found is None else self._hit).inc()
        return found

    def mark(self) -> int:
        """What L{keep} checks that nothing changed since."""
        return self._changes

    def keep(self, record: StoredObject, mark: int) -> None:
        """Keep C{record}, read since C{mark}, unless a change came meanwhile."""
        if self._heard and mark == self._changes:
            self._records[(record.kind, record.uuid)] = record

    def forget(self, kind: str, uuid: str) -> None:
        """C{kind} C{uuid} changed: its record is read anew."""
        self._changes += 1
        self._records.pop((kind, uuid), None)

    # IChangeObserver

    def changed(self, kind: str, uuid: str) -> None:
        self.forget(kind, uuid)

    def listening(self) -> None:
        self._heard = True
        self._heardGauge.set(1)

    def deaf(self) -> None:
        # What changed meanwhile will never be told: all is read anew.
        self._heard = False
        self._heardGauge.set(0)
        self._changes += 1
        self._records.clear()


class BlobCache:
    """
    Blobs of at most C{largest} bytes, up to C{size} bytes in all, the
    least recently read going first.
    """

    def __init__(
        self, size: int, largest: int = LARGEST_BLOB, *, metrics: Metrics | None = None
    ) -> None:
        self.largest = largest
        self._blobs: LRUCache[str, bytes] = LRUCache(size, getsizeof=len)
        metrics = Metrics() if metrics is None else metrics
        self._hit, self._miss = (metrics.cacheReads["blobs", o] for o in ("hit", "miss"))

    def fits(self, size: int) -> bool:
        """Whether a blob of C{size} bytes is one to keep."""
        return size <= self.largest and size <= self._blobs.maxsize

    def get(self, key: str) -> bytes | None:
        found = self._blobs.get(key)
        (self._miss if found is None else self._hit).inc()
        return found

    def keep(self, key: str, blob: bytes) -> None:
        if self.fits(len(blob)):
            self._blobs[key] = blob

    def forget(self, key: str) -> None:
        self._blobs.pop(key, None)
