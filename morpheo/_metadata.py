# -*- test-case-name: tests.test_metadata -*-
"""
Resource metadata in PostgreSQL, through a txpostgres connection pool.

A uuid is claimed by inserting a C{pending} row (the primary key makes two
concurrent claims of one uuid end with exactly one winner); the row becomes
C{ready}, with the blob's size, sha256 and key, only once the blob is
committed.  Readers see C{ready} rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg2
from attrs import frozen
from twisted.internet.defer import Deferred, FirstError
from twisted.internet.interfaces import IReactorCore
from txpostgres import txpostgres

from ._types import Resource

T = TypeVar("T")

_COLUMNS = (
    "kind, uuid::text, timestamp_upload, size, sha256, blob_key, name, description, algo::text"
)


class DatabaseError(Exception):
    """The metadata database failed or cannot be reached."""


def _resource(row: Sequence[Any]) -> Resource:
    kind, uuid, ts, size, sha, key, name, description, algo = row
    return Resource(
        kind=kind,
        uuid=uuid,
        timestamp_upload=ts,
        size=size,
        sha256=sha,
        blob_key=key,
        name=name,
        description=description,
        algo=algo,
    )


@frozen
class PatchResult:
    """What a PATCH changed: the new row, and the blob it no longer uses."""

    resource: Resource
    oldBlobKey: str | None


class Database:
    """
    A small typed face for a txpostgres pool, turning driver errors into
    L{DatabaseError} so the web layer can say the database failed.
    """

    def __init__(self, reactor: IReactorCore, dsn: str, size: int = 4) -> None:
        self._reactor = reactor
        self._dsn = dsn
        self._size = size
        self._pool: Any = None

    async def start(self) -> None:
        pool = txpostgres.ConnectionPool(None, self._dsn, min=self._size)
        pool.reactor = self._reactor
        for c in pool.connections:
            c.reactor = self._reactor
        try:
            await pool.start()
        except FirstError as e:
            reason = e.subFailure.value
            # psycopg2's messages span lines; the service says one sentence.
            raise DatabaseError(
                f"cannot connect to PostgreSQL: {' '.join(str(reason).split())}"
            ) from reason
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _guard(self, d: Deferred[T]) -> Deferred[T]:
        def translate(f: Any) -> Any:
            if f.check(psycopg2.Error, txpostgres.AlreadyPolling, OSError):
                detail = " ".join(str(f.value).split()) or type(f.value).__name__
                raise DatabaseError(f"the metadata database failed: {detail}")
            return f

        return d.addErrback(translate)

    def _ready(self) -> Any:
        if self._pool is None:
            raise DatabaseError("the metadata database is not connected")
        return self._pool

    def query(self, sql: str, args: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return self._guard(self._ready().runQuery(sql, args))

    def operation(self, sql: str, args: Sequence[Any] = ()) -> Deferred[None]:
        return self._guard(self._ready().runOperation(sql, args))

    def interaction(self, f: Callable[..., Deferred[T]], *args: Any) -> Deferred[T]:
        """Run C{f(cursor, *args)} in a transaction."""
        return self._guard(self._ready().runInteraction(f, *args))


class MetadataStore:
    """The queries of the service, on a L{Database}."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def ping(self) -> None:
        await self.db.query("SELECT 1")

    async def claim(
        self,
        kind: str,
        uuid: str,
        *,
        name: str | None = None,
        description: str | None = None,
        algo: str | None = None,
    ) -> bool:
        """Reserve C{uuid}; L{False} if it is taken (or being uploaded)."""
        rows = await self.db.query(
            "INSERT INTO resource (kind, uuid, name, description, algo, state)"
            " VALUES (%s, %s, %s, %s, %s, 'pending')"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (kind, uuid, name, description, algo),
        )
        return bool(rows)

    async def release(self, kind: str, uuid: str) -> None:
        """Give a claimed uuid back after a failed upload."""
        await self.db.operation(
            "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'",
            (kind, uuid),
        )

    async def complete(
        self, kind: str, uuid: str, size: int, sha256: str, blobKey: str
    ) -> Resource:
        """Make a claimed row visible, now that its blob is committed."""
        rows = await self.db.query(
            "UPDATE resource SET state = 'ready', size = %s, sha256 = %s, blob_key = %s,"
            " timestamp_upload = EXTRACT(EPOCH FROM clock_timestamp())::bigint"
            " WHERE kind = %s AND uuid = %s AND state = 'pending'"
            f" RETURNING {_COLUMNS}",
            (size, sha256, blobKey, kind, uuid),
        )
        if not rows:
            raise DatabaseError(f"the claim on {kind} {uuid} was lost before the upload ended")
        return _resource(rows[0])

    async def get(self, kind: str, uuid: str) -> Resource | None:
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'",
            (kind, uuid),
        )
        return _resource(rows[0]) if rows else None

    async def list(self, kind: str, limit: int, offset: int) -> list[Resource]:
        """Newest first; ties broken by insertion order, newest first."""
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE kind = %s AND state = 'ready'"
            " ORDER BY timestamp_upload DESC, seq DESC LIMIT %s OFFSET %s",
            (kind, limit, offset),
        )
        return [_resource(r) for r in rows]

    async def patch(
        self,
        kind: str,
        uuid: str,
        *,
        newUUID: str | None,
        name: str | None,
        description: str | None,
        blob: tuple[int, str, str] | None,
    ) -> PatchResult | None:
        """
        Apply a PATCH in one transaction: rename (the new uuid must have been
        claimed), new text, new blob C{(size, sha256, key)}.  L{None} if the
        resource is gone.
        """

        def run(cursor: Any) -> Deferred[PatchResult | None]:
            return Deferred.fromCoroutine(
                self._patch(cursor, kind, uuid, newUUID, name, description, blob)
            )

        return await self.db.interaction(run)

    async def _patch(
        self,
        cursor: Any,
        kind: str,
        uuid: str,
        newUUID: str | None,
        name: str | None,
        description: str | None,
        blob: tuple[int, str, str] | None,
    ) -> PatchResult | None:
        await cursor.execute(
            "SELECT blob_key FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'"
            " FOR UPDATE",
            (kind, uuid),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        oldKey = row[0]
        if newUUID is not None and newUUID != uuid:
            await cursor.execute(
                "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'",
                (kind, newUUID),
            )
        sets: list[str] = ["uuid = %s"]
        args: list[Any] = [newUUID or uuid]
        if name is not None:
            sets.append("name = %s")
            args.append(name)
        if description is not None:
            sets.append("description = %s")
            args.append(description)
        if blob is not None:
            sets.append("size = %s, sha256 = %s, blob_key = %s")
            args.extend(blob)
        await cursor.execute(
            f"UPDATE resource SET {', '.join(sets)} WHERE kind = %s AND uuid = %s"
            f" RETURNING {_COLUMNS}",
            (*args, kind, uuid),
        )
        resource = _resource(cursor.fetchone())
        return PatchResult(resource, oldKey if blob is not None else None)

    async def algoExists(self, uuid: str) -> bool:
        return await self.get("algo", uuid) is not None
