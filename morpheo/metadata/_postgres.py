# -*- test-case-name: tests.integration.test_metadata_contract,tests.integration.test_migrations -*-
"""
Object metadata in PostgreSQL, through a txpostgres connection pool:
L{PostgresMetadataStore}, on L{Database}, a small typed face for the
untyped driver.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg2
from attrs import astuple
from twisted.internet.defer import Deferred, FirstError
from twisted.internet.interfaces import IReactorCore
from txpostgres import txpostgres
from zope.interface import implementer

from .._errors import ClaimLost, DatabaseError, InUse, NoSuchObject, NoSuchParent, Taken
from .._interfaces import IMetadataStore
from .._kinds import PARENTS, TABLE, TEXT_FIELDS, childrenOf
from .._types import BlobInfo, Change, Changed, Claim, DeadClaim, Listing, StoredObject

T = TypeVar("T")


_COLUMNS = ", ".join(
    (
        "kind, uuid::text, timestamp_upload, size, sha256, blob_key",
        *TEXT_FIELDS,
        *(f"{p}::text" for p in PARENTS),
        "content_type, filename, seq",
    )
)


def _stored(row: Sequence[Any]) -> StoredObject:
    kind, uuid, ts, size, sha, key = row[:6]
    text = dict(zip(TEXT_FIELDS, row[6 : 6 + len(TEXT_FIELDS)], strict=True))
    rest = row[6 + len(TEXT_FIELDS) :]
    parents = dict(zip(PARENTS, rest[: len(PARENTS)], strict=True))
    ctype, filename, seq = rest[len(PARENTS) :]
    parentKind = TABLE[kind].parent
    return StoredObject(
        kind=kind,
        uuid=uuid,
        timestamp_upload=ts,
        size=size,
        sha256=sha,
        blob_key=key,
        text={name: text[name] for name in TABLE[kind].text},
        parent=parents[parentKind] if parentKind is not None else None,
        content_type=ctype,
        filename=filename,
        seq=seq,
    )


def _textColumn(name: str) -> str:
    """A text field's column; only the kinds' fields ever reach the SQL."""
    if name not in TEXT_FIELDS:
        raise ValueError(f"no text field {name!r}")
    return name


def _likePrefix(prefix: str) -> str:
    """A LIKE pattern matching what starts with C{prefix}, literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


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


@implementer(IMetadataStore)
class PostgresMetadataStore:
    """
    L{IMetadataStore} on a L{Database}.

    A uuid is claimed by inserting a C{pending} row (the primary key makes
    two concurrent claims of one uuid end with exactly one winner); the row
    becomes C{ready}, with the blob's size, sha256 and key, only once the
    blob is committed.  Readers see C{ready} rows only.  The columns of the
    kinds' text fields and parents are read from L{morpheo._kinds}.
    """

    def __init__(self, db: Database, owner: str = "") -> None:
        self.db = db
        self.owner = owner

    async def ping(self) -> None:
        await self.db.query("SELECT 1")

    async def claim(self, claim: Claim) -> None:
        kind = TABLE[claim.kind]
        columns = [
            "kind",
            "uuid",
            "blob_key",
            "content_type",
            "filename",
            "claimed_by",
            "claim_token",
        ]
        values: list[object] = [
            claim.kind,
            claim.uuid,
            claim.blobKey,
            claim.label.contentType,
            claim.label.filename,
            self.owner,
            claim.token,
        ]
        for name, value in claim.text.items():
            columns.append(_textColumn(name))
            values.append(value)
        if kind.parent is not None:
            columns.append(kind.parent)
            values.append(claim.parent)
        insert = (
            f"INSERT INTO resource ({', '.join(columns)}, state)"
            f" VALUES ({', '.join(['%s'] * len(values))}, 'pending')"
            " ON CONFLICT DO NOTHING RETURNING 1"
        )

        async def run(cursor: Any) -> None:
            if kind.parent is not None:
                # Held (FOR SHARE) until the claim is in: the parent cannot
                # be deleted meanwhile.
                await cursor.execute(
                    "SELECT 1 FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'"
                    " FOR SHARE",
                    (kind.parent, claim.parent),
                )
                if cursor.fetchone() is None:
                    raise NoSuchParent(kind.parent, claim.parent or "")
            await cursor.execute(insert, values)
            if cursor.fetchone() is None:
                raise Taken(claim.kind, claim.uuid)

        await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def release(self, kind: str, uuid: str, token: str) -> None:
        await self.db.operation(
            "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'"
            " AND claim_token = %s",
            (kind, uuid, token),
        )

    async def complete(self, kind: str, uuid: str, token: str, blob: BlobInfo) -> StoredObject:
        rows = await self.db.query(
            "UPDATE resource SET state = 'ready', size = %s, sha256 = %s, claim_token = NULL,"
            " upload_handle = NULL,"
            " seq = nextval(pg_get_serial_sequence('resource', 'seq')),"
            " timestamp_upload = floor(EXTRACT(EPOCH FROM clock_timestamp()))::bigint"
            " WHERE kind = %s AND uuid = %s AND state = 'pending' AND claim_token = %s"
            f" RETURNING {_COLUMNS}",
            (blob.size, blob.sha256, kind, uuid, token),
        )
        if not rows:
            raise ClaimLost(kind, uuid)
        return _stored(rows[0])

    async def get(self, kind: str, uuid: str) -> StoredObject | None:
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'",
            (kind, uuid),
        )
        return _stored(rows[0]) if rows else None

    async def list(self, kind: str, listing: Listing) -> builtins.list[StoredObject]:
        where: builtins.list[str] = ["kind = %s", "state = 'ready'"]
        args: builtins.list[object] = [kind]
        if listing.before is not None:
            where.append("seq < %s")
            args.append(listing.before)
        parentKind = TABLE[kind].parent
        if listing.parent is not None and parentKind is not None:
            where.append(f"{parentKind} = %s")
            args.append(listing.parent)
        if listing.namePrefix:
            where.append("name LIKE %s ESCAPE '\\'")
            args.append(_likePrefix(listing.namePrefix))
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT %s OFFSET %s",
            (*args, listing.limit, listing.offset),
        )
        return [_stored(r) for r in rows]

    async def delete(self, kind: str, uuid: str) -> StoredObject:
        async def run(cursor: Any) -> StoredObject:
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM resource"
                " WHERE kind = %s AND uuid = %s AND state = 'ready' FOR UPDATE",
                (kind, uuid),
            )
            row = cursor.fetchone()
            if row is None:
                raise NoSuchObject(kind, uuid)
            for child in childrenOf(kind):
                await cursor.execute(
                    f"SELECT uuid::text FROM resource WHERE kind = %s AND {kind} = %s"
                    " ORDER BY seq LIMIT 20",
                    (child, uuid),
                )
                children = [r[0] for r in cursor.fetchall()]
                if children:
                    raise InUse(kind, uuid, children)
            await cursor.execute("DELETE FROM resource WHERE kind = %s AND uuid = %s", (kind, uuid))
            return _stored(row)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def change(self, kind: str, uuid: str, change: Change) -> Changed:
        async def run(cursor: Any) -> Changed:
            await cursor.execute(
                "SELECT blob_key FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'"
                " FOR UPDATE",
                (kind, uuid),
            )
            row = cursor.fetchone()
            if row is None:
                raise NoSuchObject(kind, uuid)
            newUUID = change.newUUID or uuid
            if change.claimed is not None:
                await cursor.execute(
                    "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'"
                    " AND claim_token = %s RETURNING 1",
                    (kind, *change.claimed),
                )
                if cursor.fetchone() is None:
                    raise ClaimLost(kind, newUUID)
            sets: builtins.list[str] = ["uuid = %s"]
            args: builtins.list[Any] = [newUUID]
            for name, value in change.text.items():
                sets.append(f"{_textColumn(name)} = %s")
                args.append(value)
            blob = change.blob
            if blob is not None:
                sets.append(
                    "size = %s, sha256 = %s, blob_key = %s, content_type = %s, filename = %s"
                )
                args.extend((blob.info.size, blob.info.sha256, blob.key, *astuple(blob.label)))
            await cursor.execute(
                f"UPDATE resource SET {', '.join(sets)} WHERE kind = %s AND uuid = %s"
                f" RETURNING {_COLUMNS}",
                (*args, kind, uuid),
            )
            return Changed(_stored(cursor.fetchone()), row[0] if blob is not None else None)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    # Recovery

    async def noteUpload(self, kind: str, uuid: str, token: str, handle: str) -> None:
        rows = await self.db.query(
            "UPDATE resource SET upload_handle = %s WHERE kind = %s AND uuid = %s"
            " AND state = 'pending' AND claim_token = %s RETURNING 1",
            (handle, kind, uuid, token),
        )
        if not rows:
            raise ClaimLost(kind, uuid)

    async def heartbeat(self, tokens: Sequence[str]) -> set[str]:
        if not tokens:
            return set()
        rows = await self.db.query(
            "UPDATE resource SET heartbeat = now() WHERE state = 'pending'"
            " AND claim_token = ANY(%s) RETURNING claim_token",
            (builtins.list(tokens),),
        )
        return {r[0] for r in rows}

    async def takeDeadClaims(self, lease: float, mine: bool = False) -> builtins.list[DeadClaim]:
        # The new tokens are unique by the row's seq; the prefix, by process.
        rows = await self.db.query(
            "UPDATE resource SET claim_token = %s || seq::text, claimed_by = %s,"
            " heartbeat = now() WHERE state = 'pending'"
            " AND (heartbeat < now() - make_interval(secs => %s) OR (%s AND claimed_by = %s))"
            " RETURNING kind, uuid::text, blob_key, claim_token, upload_handle",
            (f"swept.{secrets.token_hex(8)}.", self.owner, lease, mine, self.owner),
        )
        return [DeadClaim(k, u, key, token, handle) for k, u, key, token, handle in rows]

    async def referencedKeys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        rows = await self.db.query(
            "SELECT blob_key FROM resource WHERE blob_key = ANY(%s)", (builtins.list(keys),)
        )
        return {r[0] for r in rows}


#: The name this store had before L{IMetadataStore}; kept for embedders.
MetadataStore = PostgresMetadataStore
