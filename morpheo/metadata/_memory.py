# -*- test-case-name: tests.integration.test_metadata_contract -*-
"""
Object metadata in memory, for development and the fast tests of the layers
above: L{MemoryMetadataStore}.

It holds rows in a dict and behaves like L{PostgresMetadataStore} wherever
the domain layer can tell (the contract suite runs against both): a claim
is a pending row readers never see, the completion order is a counter, the
time of now is the injected clock's.  The database's own checks are kept
too (uuids are uuids, names fit their column, a ready row has its blob), so
that what PostgreSQL would refuse is refused here.  L{goDown} makes every
call fail as an unreachable database would.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from itertools import count
from uuid import UUID

from attrs import define, evolve, field
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from .._errors import (
    DATABASE_UNAVAILABLE,
    ClaimLost,
    DatabaseError,
    InUse,
    NoSuchObject,
    NoSuchParent,
    NoSuchUpload,
    Taken,
    TooManyUploads,
    UploadBusy,
    UploadLost,
)
from .._interfaces import IMetadataStore, IUploadMetadataStore
from .._kinds import TABLE, TEXT_FIELDS, childrenOf
from .._types import BlobInfo, Change, Changed, Claim, DeadClaim, Listing, StoredObject, Upload

#: What PostgreSQL checks of a row (schema/), checked here alike.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEXT_LIMIT = 255
#: Numbers the tokens of the claims a sweep takes over.
_takeovers = count(1)


class _State(Enum):
    PENDING = "pending"
    READY = "ready"


def _uuid(value: str) -> str:
    """A uuid as the C{uuid} column stores and shows it, or the error it raises."""
    try:
        return str(UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise DatabaseError(
            f"the metadata database failed: invalid input syntax for type uuid: {value!r}"
        ) from None


def _text(fields: Mapping[str, str | None]) -> dict[str, str | None]:
    """The text columns C{fields} sets, held to the schema's checks."""
    for name, value in fields.items():
        if name not in TEXT_FIELDS:
            raise ValueError(f"no text field {name!r}")
        if value is not None and len(value) > _TEXT_LIMIT:
            raise DatabaseError(
                f"the metadata database failed: {name} is longer than {_TEXT_LIMIT} characters"
            )
    return dict(fields)


@define
class _Row:
    """One row of the table, pending or ready."""

    kind: str
    uuid: str
    seq: int
    heartbeat: float
    claimedBy: str
    blobKey: str | None
    token: str | None = None
    #: The store's handle of the claim's write in progress, once noted.
    handle: str | None = None
    text: dict[str, str | None] = field(factory=dict)
    parent: str | None = None
    contentType: str | None = None
    filename: str | None = None
    state: _State = _State.PENDING
    size: int | None = None
    sha256: str | None = None
    timestamp: int = 0

    def stored(self) -> StoredObject:
        assert self.size is not None and self.sha256 is not None and self.blobKey is not None
        return StoredObject(
            kind=self.kind,
            uuid=self.uuid,
            timestamp_upload=self.timestamp,
            size=self.size,
            sha256=self.sha256,
            blob_key=self.blobKey,
            text={name: self.text.get(name) for name in TABLE[self.kind].text},
            parent=self.parent,
            content_type=self.contentType,
            filename=self.filename,
            seq=self.seq,
        )


def _blobChecked(info: BlobInfo, key: str | None) -> None:
    """A ready row has a blob: its key, a length and a sha256 (hex)."""
    if info.size < 0 or not _SHA256.fullmatch(info.sha256) or key is None:
        raise DatabaseError(
            "the metadata database failed: a ready row needs a key, a size and a sha256"
        )


class _Tables:
    """
    What several stores share when they stand for processes on one
    database: the rows, the sequence, and whether it can be reached.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.rows: dict[tuple[str, str], _Row] = {}
        self.sequence = count(1)
        #: The resumable uploads, by id, each with its busy lease (token, until).
        self.uploads: dict[str, tuple[Upload, str | None, float]] = {}
        #: Why the database cannot be reached, while it cannot.
        self.outage: str | None = None
        #: What a driver would have said about it (for the log only).
        self.outageDetail: str | None = None

    def reachable(self) -> None:
        if self.outage is not None:
            raise DatabaseError(self.outage, detail=self.outageDetail)

    def now(self) -> float:
        return self.clock.seconds()

    def find(self, kind: str, uuid: str, state: _State = _State.READY) -> _Row | None:
        row = self.rows.get((kind, _uuid(uuid)))
        return row if row is not None and row.state is state else None


_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


@implementer(IMetadataStore, IUploadMetadataStore)
class MemoryMetadataStore:
    """
    L{IMetadataStore} in memory.  C{clock} gives the time of completions
    and heartbeats; L{sibling} is another process's store on the same rows.
    """

    def __init__(self, clock: IReactorTime, owner: str = "") -> None:
        self.owner = owner
        self._tables = _Tables(clock)

    def sibling(self, owner: str) -> MemoryMetadataStore:
        """A store of another process, with its own owner, on the same rows."""
        other = MemoryMetadataStore(self._tables.clock, owner)
        other._tables = self._tables
        return other

    def goDown(self, reason: str = DATABASE_UNAVAILABLE, detail: str | None = None) -> None:
        """
        From now on every call fails with L{DatabaseError}, as if the
        database were gone: C{reason} is its sentence, C{detail} what the
        driver said.
        """
        self._tables.outage = reason
        self._tables.outageDetail = detail

    def comeBack(self) -> None:
        """The database can be reached again, its rows as they were."""
        self._tables.outage = None

    def rows(self) -> list[tuple[str, str, str]]:
        """Every row, ready or claimed, as C{(kind, uuid, state)}: for tests."""
        return sorted((r.kind, r.uuid, r.state.value) for r in self._tables.rows.values())

    def uploadHandles(self) -> dict[tuple[str, str], str]:
        """The handle each row holds, by C{(kind, uuid)}: for tests."""
        return {
            (r.kind, r.uuid): r.handle for r in self._tables.rows.values() if r.handle is not None
        }

    def _open(self) -> _Tables:
        """The rows, if the database can be reached."""
        self._tables.reachable()
        return self._tables

    def _object(self, kind: str, uuid: str) -> tuple[_Tables, _Row]:
        """The rows and the ready row of that object, or L{NoSuchObject}."""
        tables = self._open()
        row = tables.find(kind, uuid)
        if row is None:
            raise NoSuchObject(kind, uuid)
        return tables, row

    async def ping(self) -> None:
        self._open()

    async def claim(self, claim: Claim) -> None:
        tables = self._open()
        kind = TABLE[claim.kind]
        text = _text(claim.text)
        parent = None
        if kind.parent is not None:
            if claim.parent is None or tables.find(kind.parent, claim.parent) is None:
                raise NoSuchParent(kind.parent, claim.parent or "")
            parent = _uuid(claim.parent)
        key = (claim.kind, _uuid(claim.uuid))
        if key in tables.rows:
            raise Taken(claim.kind, claim.uuid)
        tables.rows[key] = _Row(
            kind=claim.kind,
            uuid=key[1],
            seq=next(tables.sequence),
            heartbeat=tables.now(),
            claimedBy=self.owner,
            blobKey=claim.blobKey,
            token=claim.token,
            text=text,
            parent=parent,
            contentType=claim.label.contentType,
            filename=claim.label.filename,
        )

    def _held(self, kind: str, uuid: str, token: str | None) -> tuple[_Tables, _Row | None]:
        """The rows, and the pending row of that uuid if C{token} holds it."""
        tables = self._open()
        row = tables.find(kind, uuid, _State.PENDING)
        return tables, row if row is not None and row.token == token else None

    async def release(self, kind: str, uuid: str, token: str) -> None:
        tables, row = self._held(kind, uuid, token)
        if row is not None:
            del tables.rows[(kind, row.uuid)]

    async def complete(self, kind: str, uuid: str, token: str, blob: BlobInfo) -> StoredObject:
        tables, row = self._held(kind, uuid, token)
        if row is None:
            raise ClaimLost(kind, uuid)
        _blobChecked(blob, row.blobKey)
        row.state = _State.READY
        row.token = row.handle = None
        row.size, row.sha256 = blob.size, blob.sha256
        row.seq = next(tables.sequence)
        row.timestamp = int(tables.now())
        return row.stored()

    async def get(self, kind: str, uuid: str) -> StoredObject | None:
        row = self._open().find(kind, uuid)
        return row.stored() if row is not None else None

    async def list(self, kind: str, listing: Listing) -> builtins.list[StoredObject]:
        tables = self._open()
        parent = listing.parent
        parent = _uuid(parent) if parent is not None and TABLE[kind].parent is not None else None
        before, prefix = listing.before, listing.namePrefix
        rows = sorted(
            (
                row
                for row in tables.rows.values()
                if row.kind == kind
                and row.state is _State.READY
                and (before is None or row.seq < before)
                and (parent is None or row.parent == parent)
                and (not prefix or (row.text.get("name") or "").startswith(prefix))
            ),
            key=lambda row: row.seq,
            reverse=True,
        )
        return [row.stored() for row in rows[listing.offset : listing.offset + listing.limit]]

    async def delete(self, kind: str, uuid: str) -> StoredObject:
        tables, row = self._object(kind, uuid)
        for child in childrenOf(kind):
            children = sorted(
                (r for r in tables.rows.values() if r.kind == child and r.parent == row.uuid),
                key=lambda r: r.seq,
            )
            if children:
                raise InUse(kind, uuid, [r.uuid for r in children[:20]])
        del tables.rows[(kind, row.uuid)]
        return row.stored()

    async def change(self, kind: str, uuid: str, change: Change) -> Changed:
        tables, row = self._object(kind, uuid)
        # Everything is checked before anything changes: one transaction.
        newUUID = _uuid(change.newUUID) if change.newUUID else row.uuid
        if newUUID != row.uuid and tables.find(kind, newUUID) is not None:
            raise DatabaseError(f"the metadata database failed: {kind} {newUUID} already exists")
        held = None
        if change.claimed is not None:
            held = self._held(kind, *change.claimed)[1]
            if held is None:
                raise ClaimLost(kind, newUUID)
        text = _text(change.text)
        blob = change.blob
        if blob is not None:
            _blobChecked(blob.info, blob.key)
        oldKey = row.blobKey
        if held is not None:
            del tables.rows[(kind, held.uuid)]
        if newUUID != row.uuid:
            del tables.rows[(kind, row.uuid)]
            row.uuid = newUUID
            tables.rows[(kind, newUUID)] = row
        row.text.update(text)
        if blob is not None:
            row.size, row.sha256, row.blobKey = blob.info.size, blob.info.sha256, blob.key
            row.contentType, row.filename = blob.label.contentType, blob.label.filename
        return Changed(row.stored(), oldKey if blob is not None else None)

    # Recovery

    async def noteUpload(self, kind: str, uuid: str, token: str, handle: str) -> None:
        _, row = self._held(kind, uuid, token)
        if row is None:
            raise ClaimLost(kind, uuid)
        row.handle = handle

    async def heartbeat(self, tokens: Sequence[str]) -> set[str]:
        tables = self._open()
        now, wanted = tables.now(), set(tokens)
        held = set()
        for row in tables.rows.values():
            if row.state is _State.PENDING and row.token in wanted:
                row.heartbeat = now
                held.add(row.token)
        return held

    async def takeDeadClaims(self, lease: float, mine: bool = False) -> builtins.list[DeadClaim]:
        tables = self._open()
        now = tables.now()
        taken = []
        uploading = {u.token for u, _, _ in tables.uploads.values() if u.token is not None}
        for row in tables.rows.values():
            if row.token in uploading:
                continue  # an upload's claim lives as long as its upload
            if row.state is _State.PENDING and (
                row.heartbeat < now - lease or (mine and row.claimedBy == self.owner)
            ):
                row.token = f"swept.{next(_takeovers)}"
                row.claimedBy, row.heartbeat = self.owner, now
                taken.append(DeadClaim(row.kind, row.uuid, row.blobKey, row.token, row.handle))
        return taken

    async def referencedKeys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        wanted = set(keys)
        tables = self._open()
        keys = [row.blobKey for row in tables.rows.values() if row.blobKey is not None]
        keys += [upload.blobKey for upload, _, _ in tables.uploads.values()]
        return {key for key in keys if key in wanted}

    # Resumable uploads

    def uploadIds(self) -> builtins.list[str]:
        """Every upload recorded, expired or not: for tests."""
        return sorted(self._tables.uploads)

    def _live(self, tables: _Tables, uploadId: str) -> tuple[Upload, str | None, float] | None:
        found = tables.uploads.get(uploadId)
        if found is None or found[0].expires <= tables.now():
            return None
        return found

    async def openUpload(
        self, upload: Upload, claim: Claim | None, limit: int | None, lifetime: float
    ) -> Upload:
        tables = self._open()
        if not _ID.fullmatch(upload.id) or upload.id in tables.uploads:
            raise DatabaseError("the metadata database failed: a bad or duplicate upload id")
        if limit is not None:
            mine = [
                u
                for u in tables.uploads
                if self._live(tables, u) is not None and tables.uploads[u][0].owner == upload.owner
            ]
            if len(mine) >= limit:
                raise TooManyUploads(limit)
        if claim is not None:
            await self.claim(claim)
        now = tables.now()
        recorded = evolve(upload, expires=now + lifetime, created=now)
        tables.uploads[upload.id] = (recorded, None, 0.0)
        return recorded

    async def getUpload(self, uploadId: str) -> Upload | None:
        found = self._live(self._open(), uploadId)
        return found[0] if found is not None else None

    async def takeUpload(self, uploadId: str, owner: str, busy: str, lease: float) -> Upload:
        tables = self._open()
        found = self._live(tables, uploadId)
        if found is None or found[0].owner != owner:
            raise NoSuchUpload(uploadId)
        upload, holder, until = found
        now = tables.now()
        if holder is not None and until >= now:
            raise UploadBusy()
        tables.uploads[uploadId] = (upload, busy, now + lease)
        return upload

    def _holding(self, uploadId: str, busy: str) -> tuple[_Tables, Upload | None]:
        tables = self._open()
        found = tables.uploads.get(uploadId)
        if found is None or found[1] != busy:
            return tables, None
        return tables, found[0]

    async def recordUpload(
        self,
        uploadId: str,
        busy: str,
        state: str,
        offset: int,
        length: int | None,
        concluded: bool,
        lifetime: float,
    ) -> Upload:
        tables, upload = self._holding(uploadId, busy)
        if upload is None:
            raise UploadLost()
        length = upload.length if length is None else length
        if offset < 0 or (length is not None and offset > length):
            raise DatabaseError("the metadata database failed: an offset past the length")
        recorded = evolve(
            upload,
            state=state,
            offset=offset,
            length=length,
            concluded=concluded,
            expires=tables.now() + lifetime,
        )
        tables.uploads[uploadId] = (recorded, None, 0.0)
        return recorded

    async def leaveUpload(self, uploadId: str, busy: str) -> None:
        tables, upload = self._holding(uploadId, busy)
        if upload is not None:
            tables.uploads[uploadId] = (upload, None, 0.0)

    async def refreshUploads(self, busy: Sequence[str], lease: float) -> set[str]:
        tables = self._open()
        wanted, held = set(busy), set()
        for uploadId, (upload, holder, _) in list(tables.uploads.items()):
            if holder is not None and holder in wanted:
                tables.uploads[uploadId] = (upload, holder, tables.now() + lease)
                held.add(holder)
        return held

    async def finishUpload(self, uploadId: str, busy: str, blob: BlobInfo) -> StoredObject:
        tables, upload = self._holding(uploadId, busy)
        if upload is None:
            raise UploadLost()
        assert upload.kind is not None and upload.uuid is not None and upload.token is not None
        _, row = self._held(upload.kind, upload.uuid, upload.token)
        if row is None:
            raise ClaimLost(upload.kind, upload.uuid)
        _blobChecked(blob, row.blobKey)
        del tables.uploads[uploadId]
        return await self.complete(upload.kind, upload.uuid, upload.token, blob)

    async def dropUpload(self, uploadId: str, busy: str) -> None:
        tables, upload = self._holding(uploadId, busy)
        if upload is None:
            return
        del tables.uploads[uploadId]
        if upload.kind is not None and upload.uuid is not None and upload.token is not None:
            await self.release(upload.kind, upload.uuid, upload.token)

    async def takeExpiredUploads(self, busy: str, lease: float) -> builtins.list[Upload]:
        tables = self._open()
        now, taken = tables.now(), []
        for uploadId, (upload, holder, until) in list(tables.uploads.items()):
            if upload.expires <= now and (holder is None or until < now):
                tables.uploads[uploadId] = (upload, busy, now + lease)
                taken.append(upload)
        return taken
