# -*- test-case-name: tests.unit.test_objects_domain,tests.unit.test_uploads -*-
"""
The object lifecycle: put, replace, remove, get, list and sweep, against an
L{IMetadataStore} and an L{IBlobStore}.  Nothing here knows HTTP: the web
layer decodes a request into the values of this module, calls L{Objects},
and turns its results and typed errors into answers.

An upload is a transaction over two stores that cannot share one: the uuid
is claimed (a row nobody sees), the blob streamed and committed, then the
row completed.  Every failure undoes what was done, in reverse, and a
claim or a clean-up is waited for to its end even when the request that
started it is cancelled (see L{_toTheEnd}).
"""

from __future__ import annotations

import secrets
import uuid as _uuid
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from attrs import evolve, field, frozen
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .._errors import DatabaseError, DigestMismatch, NoSuchObject, SizeMismatch, TooLarge, Vanished
from .._interfaces import IBlobSource, IBlobStore, IBlobWriter, IMetadataStore
from .._types import BlobInfo, Change, Claim, Label, Listing, NewBlob, StoredObject
from ..blobstores._verify import verifying
from ._sweep import Swept, sweep

T = TypeVar("T")


@frozen
class IncomingBlob:
    """
    A blob about to be uploaded: its announced size, the digests its client
    stated (by hashlib name), and what its part said of itself.
    """

    size: int
    expected: Mapping[str, bytes] = field(factory=dict)
    label: Label = field(factory=Label)


@frozen
class NewObject:
    """An upload accepted by the web layer: the row to be, and its blob."""

    kind: str
    blob: IncomingBlob
    uuid: str | None = None
    text: Mapping[str, str] = field(factory=dict)
    parent: str | None = None


@frozen
class Replacement:
    """A change to an object: rename, new text fields, a new blob."""

    newUUID: str | None = None
    text: Mapping[str, str] = field(factory=dict)
    blob: IncomingBlob | None = None


@frozen
class Page:
    """One page of a list, newest first, and whether more follow it."""

    items: list[StoredObject]
    more: bool


def blobKey(kind: str, uuid: str) -> str:
    """A fresh key: a replaced blob never overwrites the one in use."""
    return f"{kind}/{uuid}-{secrets.token_hex(6)}"


class Objects:
    """
    The stored objects of every kind.

    @param maxBlobSize: the largest blob taken, in bytes (L{None}: any).
    """

    _log = Logger()

    def __init__(
        self,
        metadata: IMetadataStore,
        blobs: IBlobStore,
        *,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        maxBlobSize: int | None = None,
    ) -> None:
        self.metadata = metadata
        self.blobs = blobs
        self.maxBlobSize = maxBlobSize
        self._reactor = reactor
        self._pool = pool

    # Reading

    async def get(self, kind: str, uuid: str) -> StoredObject:
        """The ready object, or L{NoSuchObject}."""
        found = await self.metadata.get(kind, uuid)
        if found is None:
            raise NoSuchObject(kind, uuid)
        return found

    async def list(self, kind: str, listing: Listing) -> Page:
        """
        A page of C{listing.limit} objects, newest first, and whether more
        follow (a keyset cursor, C{before}, loses or repeats nothing while
        uploads arrive).
        """
        items = await self.metadata.list(kind, evolve(listing, limit=listing.limit + 1))
        return Page(items[: listing.limit], len(items) > listing.limit)

    def produce(
        self, stored: StoredObject, consumer: IConsumer, offset: int, length: int
    ) -> Deferred[None]:
        """Stream C{length} bytes of C{stored}'s blob from C{offset} into C{consumer}."""
        return self.blobs.produce(stored.blob_key, consumer, offset, length)

    async def ready(self) -> dict[str, BaseException | None]:
        """Whether each store can be used now: L{None}, or why not."""
        report: dict[str, BaseException | None] = {}
        checks: dict[str, Any] = {"database": self.metadata.ping, "blobstore": self.blobs.check}
        for name, check in checks.items():
            try:
                await check()
            except Exception as e:
                report[name] = e
            else:
                report[name] = None
        return report

    # Writing

    def admit(self, size: int | None, overhead: int = 0) -> None:
        """
        L{TooLarge} for a blob over the maximum (or a body over it by more
        than C{overhead}, the most its other parts can hold); known sizes
        are refused before a byte of the body is read.
        """
        limit = self.maxBlobSize
        if limit is not None and size is not None and size > limit + overhead:
            raise TooLarge(limit)

    async def put(self, new: NewObject, source: IBlobSource) -> StoredObject:
        """
        Store a new object: claim its uuid (L{Taken}, L{NoSuchParent}),
        stream its blob from C{source} and commit it, complete its row.
        Nothing stays behind on failure.
        """
        uuid = new.uuid or str(_uuid.uuid4())
        key = blobKey(new.kind, uuid)
        blob = new.blob
        claim = Claim(
            kind=new.kind,
            uuid=uuid,
            blobKey=key,
            text=new.text,
            parent=new.parent,
            label=blob.label,
        )
        try:
            await self._claim(claim)
        except BaseException:
            source.stop()
            raise
        try:
            info = await self._receive(key, blob, source)
            try:
                return await self.metadata.complete(new.kind, uuid, info)
            except BaseException:
                await self._quietly(self.blobs.delete(key))
                raise
        except BaseException:
            await self._quietly(self.metadata.release(new.kind, uuid))
            raise

    async def replace(
        self, current: StoredObject, change: Replacement, source: IBlobSource
    ) -> StoredObject:
        """
        Apply C{change} to C{current} at once: a new uuid is claimed first
        (L{Taken}), a new blob committed under a fresh key, then the row
        changed in one transaction (L{Vanished} if the object went away
        meanwhile) and the old blob deleted.  C{source} is the rest of the
        request body, read to its end.
        """
        kind, uuid = current.kind, current.uuid
        renamed = change.newUUID if change.newUUID not in (None, uuid) else None
        key = blobKey(kind, change.newUUID or uuid) if change.blob is not None else None
        if renamed is not None:
            try:
                await self._claim(Claim(kind=kind, uuid=renamed, blobKey=key))
            except BaseException:
                source.stop()
                raise
        written = None
        try:
            newBlob = None
            if change.blob is not None and key is not None:
                info = await self._receive(key, change.blob, source)
                written = key
                newBlob = NewBlob(key, info, change.blob.label)
            else:
                await source.done()
            try:
                changed = await self.metadata.change(
                    kind, uuid, Change(newUUID=change.newUUID, text=change.text, blob=newBlob)
                )
            except NoSuchObject:
                raise Vanished(kind, uuid) from None
        except BaseException:
            if written is not None:
                await self._quietly(self.blobs.delete(written))
            if renamed is not None:
                await self._quietly(self.metadata.release(kind, renamed))
            raise
        if changed.oldBlobKey is not None:
            await self._quietly(self.blobs.delete(changed.oldBlobKey))
        return changed.object

    async def remove(self, kind: str, uuid: str) -> StoredObject:
        """
        Delete an object (L{NoSuchObject}; L{InUse} while children use it):
        the row first, in a transaction, then the blob, so a failure in
        between leaves an unreferenced blob (swept later), never a row
        without its blob.
        """
        removed = await self.metadata.delete(kind, uuid)
        await self._quietly(self.blobs.delete(removed.blob_key))
        return removed

    async def sweep(self, *, atStart: bool = False) -> Swept:
        """Sweep what dead uploads left (see L{morpheo.objects._sweep})."""
        return await sweep(self.metadata, self.blobs, atStart=atStart)

    # The transaction's steps

    async def _claim(self, claim: Claim) -> None:
        _, cancelled = await _toTheEnd(ensureDeferred(self.metadata.claim(claim)))
        if cancelled:
            await self._quietly(self.metadata.release(claim.kind, claim.uuid))
            raise CancelledError()

    def _writer(self, key: str, blob: IncomingBlob) -> IBlobWriter:
        return verifying(
            self.blobs.writer(key, blob.size), dict(blob.expected), self._reactor, self._pool
        )

    async def _receive(self, key: str, blob: IncomingBlob, source: IBlobSource) -> BlobInfo:
        """
        Stream the blob from C{source} and commit it, checked against the
        digests its client stated; abort or delete it on failure.
        """
        writer = self._writer(key, blob)
        source.streamTo(writer)
        try:
            await source.done()
            info = await writer.finish()
        except SizeMismatch:
            await self._quietly(writer.abort())
            raise
        except BaseException:
            source.stop()
            await self._quietly(writer.abort())
            raise
        expected = blob.expected.get("sha256")
        if expected is not None and bytes.fromhex(info.sha256) != expected:
            # The store computes sha256 as it commits; no row points here yet.
            await self._quietly(self.blobs.delete(key))
            raise DigestMismatch("sha256")
        return info

    async def _quietly(self, d: Deferred[Any] | Coroutine[Any, Any, Any]) -> None:
        """Clean-up that must not hide the error being handled, nor be cut
        short by a cancellation (see L{_toTheEnd})."""
        try:
            await _toTheEnd(ensureDeferred(d))
        except DatabaseError as e:
            # Said once where it failed; what is left is the sweep's.
            self._log.warn("clean-up after a failed request is left to the sweep: {e}", e=str(e))
        except Exception:
            self._log.failure("clean-up after a failed request failed")


async def _toTheEnd(d: Deferred[T]) -> tuple[T, bool]:
    """
    C{d}'s result, and whether the handler awaiting it was cancelled
    meanwhile.  Klein cancels the handler of a client that went away (the
    graceful stop cuts connections too), and a cancellation that reached a
    database write or a clean-up would abandon it with its outcome unknown:
    a claim made anyway would keep its uuid, a clean-up would be half done.
    So C{d} is waited for to its end; a failure of C{d} is raised.
    """
    outcome: list[T | Failure] = []
    waiting: list[Deferred[None]] = []

    def finished(result: T | Failure) -> None:
        outcome.append(result)
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(None)

    d.addBoth(finished)
    cancelled = False
    while not outcome:
        waiter: Deferred[None] = Deferred()
        waiting.append(waiter)
        try:
            await waiter
        except CancelledError:
            cancelled = True
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result, cancelled
