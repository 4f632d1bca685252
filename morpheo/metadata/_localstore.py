# -*- test-case-name: tests.integration.test_localstore -*-
"""
Which local blob store a database serves (the table C{local_store}): at
most one, recorded by the first node on the local store that starts on the
database.  Rows point to blobs by key alone, so a node with another
directory would serve rows whose blobs it does not have, and sweep blobs
whose rows it cannot see; it is refused at start instead.
"""

from __future__ import annotations

from datetime import datetime, timezone

from attrs import frozen

from .._errors import DatabaseError
from ._postgres import Database


@frozen
class LocalStoreRecord:
    """A local store as a database knows it: its identity, and when, by
    which host and for which directory it was first registered."""

    storeId: str
    host: str
    path: str
    registeredAt: datetime | None = None

    def describe(self) -> str:
        """The store in a sentence: which, where, since when."""
        since = ""
        if self.registeredAt is not None:
            when = self.registeredAt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            since = f", registered {when}"
        return f"{self.storeId} (in {self.path} on {self.host}{since})"


_COLUMNS = "store_id::text, host, path, registered_at"


class OtherLocalStore(Exception):
    """The database serves another local store than this node's."""

    def __init__(self, served: LocalStoreRecord, ours: LocalStoreRecord) -> None:
        super().__init__(served, ours)
        self.served = served
        self.ours = ours

    def __str__(self) -> str:
        return (
            f"the database already serves the local blob store {self.served.describe()},"
            f" not this node's {self.ours.storeId} in {self.ours.path}: use that directory"
            f" (--blob-dir {self.served.path}), another database, or one directory mounted"
            " by every node (--blob-dir with --shared-blob-dir)"
        )


async def registerLocalStore(db: Database, ours: LocalStoreRecord) -> LocalStoreRecord:
    """
    Record C{ours} if the database serves no local store yet; the store it
    serves (C{ours}, with its registration), or L{OtherLocalStore}.  Of two
    nodes registering at once, one wins and the other reads the winner's.
    """
    rows = await db.query(
        "INSERT INTO local_store (store_id, host, path) VALUES (%s, %s, %s)"
        f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
        (ours.storeId, ours.host, ours.path),
    )
    if not rows:
        rows = await db.query(f"SELECT {_COLUMNS} FROM local_store")
    if not rows:
        raise DatabaseError("the local store's registration vanished while it was read")
    storeId, host, path, registeredAt = rows[0]
    served = LocalStoreRecord(storeId, host, path, registeredAt)
    if served.storeId != ours.storeId:
        raise OtherLocalStore(served, ours)
    return served
