# -*- test-case-name: tests.integration.test_migrations -*-
"""
Resource metadata in PostgreSQL, through a txpostgres connection pool.

A uuid is claimed by inserting a C{pending} row (the primary key makes two
concurrent claims of one uuid end with exactly one winner); the row becomes
C{ready}, with the blob's size, sha256 and key, only once the blob is
committed.  Readers see C{ready} rows only.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg2
from attrs import frozen
from twisted.internet.defer import Deferred, FirstError
from twisted.internet.interfaces import IReactorCore
from txpostgres import txpostgres

from .._types import Resource

T = TypeVar("T")

_COLUMNS = (
    "kind, uuid::text, timestamp_upload, size, sha256, blob_key, name, description,"
    " algo::text, content_type, filename, seq"
)


class DatabaseError(Exception):
    """The metadata database failed or cannot be reached."""


def _resource(row: Sequence[Any]) -> Resource:
    kind, uuid, ts, size, sha, key, name, description, algo, ctype, filename, seq = row
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
        content_type=ctype,
        filename=filename,
        seq=seq,
    )


def _likePrefix(prefix: str) -> str:
    """A LIKE pattern matching what starts with C{prefix}, literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


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
    """
    The queries of the service, on a L{Database}.  C{owner} names this
    process in the claims it makes, so that its dead claims can be told from
    another live process's.
    """

    def __init__(self, db: Database, owner: str = "") -> None:
        self.db = db
        self.owner = owner

    async def ping(self) -> None:
        await self.db.query("SELECT 1")

    async def claim(
        self,
        kind: str,
        uuid: str,
        *,
        blobKey: str | None = None,
        name: str | None = None,
        description: str | None = None,
        algo: str | None = None,
        contentType: str | None = None,
        filename: str | None = None,
    ) -> bool:
        """
        Reserve C{uuid}, recording where its blob will go; L{False} if it is
        taken (or being uploaded).
        """
        rows = await self.db.query(
            "INSERT INTO resource (kind, uuid, blob_key, name, description, algo,"
            " content_type, filename, claimed_by, state)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending')"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (kind, uuid, blobKey, name, description, algo, contentType, filename, self.owner),
        )
        return bool(rows)

    async def claimModel(
        self, uuid: str, algo: str, blobKey: str, contentType: str | None = None
    ) -> str:
        """
        Reserve a model's uuid if its algo exists, holding the algo so that
        it cannot be deleted meanwhile: C{"claimed"}, C{"taken"} or
        C{"no algo"}.
        """

        async def run(cursor: Any) -> str:
            await cursor.execute(
                "SELECT 1 FROM resource WHERE kind = 'algo' AND uuid = %s AND state = 'ready'"
                " FOR SHARE",
                (algo,),
            )
            if cursor.fetchone() is None:
                return "no algo"
            await cursor.execute(
                "INSERT INTO resource (kind, uuid, blob_key, algo, content_type, claimed_by, state)"
                " VALUES ('model', %s, %s, %s, %s, %s, 'pending')"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (uuid, blobKey, algo, contentType, self.owner),
            )
            return "claimed" if cursor.fetchone() else "taken"

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def release(self, kind: str, uuid: str) -> None:
        """Give a claimed uuid back after a failed upload."""
        await self.db.operation(
            "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'",
            (kind, uuid),
        )

    async def complete(
        self, kind: str, uuid: str, size: int, sha256: str, blobKey: str | None = None
    ) -> Resource:
        """
        Make a claimed row visible, now that its blob is committed; it takes
        the next place in the completion order.
        """
        rows = await self.db.query(
            "UPDATE resource SET state = 'ready', size = %s, sha256 = %s,"
            " blob_key = COALESCE(%s, blob_key),"
            " seq = nextval(pg_get_serial_sequence('resource', 'seq')),"
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

    async def list(
        self,
        kind: str,
        limit: int,
        offset: int = 0,
        *,
        before: int | None = None,
        algo: str | None = None,
        namePrefix: str | None = None,
    ) -> list[Resource]:
        """
        Newest first.  C{before} is a keyset cursor: only what completed
        before the resource of that C{seq}, so pages neither lose nor repeat
        items while uploads arrive.
        """
        where: builtins.list[str] = ["kind = %s", "state = 'ready'"]
        args: builtins.list[object] = [kind]
        if before is not None:
            where.append("seq < %s")
            args.append(before)
        if algo is not None:
            where.append("algo = %s")
            args.append(algo)
        if namePrefix:
            where.append("name LIKE %s ESCAPE '\\'")
            args.append(_likePrefix(namePrefix))
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        return [_resource(r) for r in rows]

    async def delete(self, kind: str, uuid: str) -> Resource | builtins.list[str] | None:
        """
        Delete a ready resource's row: the row, or for an algo that models
        still use, the uuids of (some of) those models; L{None} if absent.
        The caller deletes the blob after: never a row without its blob.
        """

        async def run(cursor: Any) -> Resource | builtins.list[str] | None:
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM resource"
                " WHERE kind = %s AND uuid = %s AND state = 'ready' FOR UPDATE",
                (kind, uuid),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            if kind == "algo":
                await cursor.execute(
                    "SELECT uuid::text FROM resource WHERE kind = 'model' AND algo = %s"
                    " ORDER BY seq LIMIT 20",
                    (uuid,),
                )
                users = [r[0] for r in cursor.fetchall()]
                if users:
                    return users
            await cursor.execute("DELETE FROM resource WHERE kind = %s AND uuid = %s", (kind, uuid))
            return _resource(row)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def patch(
        self,
        kind: str,
        uuid: str,
        *,
        newUUID: str | None,
        name: str | None,
        description: str | None,
        blob: tuple[int, str, str] | None,
        contentType: str | None = None,
        filename: str | None = None,
    ) -> PatchResult | None:
        """
        Apply a PATCH in one transaction: rename (the new uuid must have been
        claimed), new text, new blob C{(size, sha256, key)}.  L{None} if the
        resource is gone.
        """

        async def run(cursor: Any) -> PatchResult | None:
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
            for column, value in (("name", name), ("description", description)):
                if value is not None:
                    sets.append(f"{column} = %s")
                    args.append(value)
            if blob is not None:
                sets.append(
                    "size = %s, sha256 = %s, blob_key = %s, content_type = %s, filename = %s"
                )
                args.extend((*blob, contentType, filename))
            await cursor.execute(
                f"UPDATE resource SET {', '.join(sets)} WHERE kind = %s AND uuid = %s"
                f" RETURNING {_COLUMNS}",
                (*args, kind, uuid),
            )
            resource = _resource(cursor.fetchone())
            return PatchResult(resource, oldKey if blob is not None else None)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def algoExists(self, uuid: str) -> bool:
        return await self.get("algo", uuid) is not None

    # Recovery

    async def heartbeat(self) -> None:
        """Say this process's claims are alive."""
        await self.db.operation(
            "UPDATE resource SET heartbeat = now() WHERE claimed_by = %s AND state = 'pending'",
            (self.owner,),
        )

    async def deadClaims(
        self, staleAfter: float, mine: bool = False
    ) -> builtins.list[tuple[str, str, str | None]]:
        """
        The pending claims that nobody keeps alive: those not refreshed for
        C{staleAfter} seconds, and with C{mine} every claim of this owner
        (at start-up, when they can only be a dead run's).  Their
        C{(kind, uuid, blob key)}: the caller removes what was written
        under the key, then L{release}s the claim.
        """
        rows = await self.db.query(
            "SELECT kind, uuid::text, blob_key FROM resource WHERE state = 'pending'"
            " AND (heartbeat < now() - make_interval(secs => %s) OR (%s AND claimed_by = %s))",
            (staleAfter, mine, self.owner),
        )
        return [(k, u, key) for k, u, key in rows]

    async def referencedKeys(self, keys: Sequence[str]) -> set[str]:
        """Which of C{keys} a row (ready or pending) points to."""
        if not keys:
            return set()
        rows = await self.db.query(
            "SELECT blob_key FROM resource WHERE blob_key = ANY(%s)", (list(keys),)
        )
        return {r[0] for r in rows}
