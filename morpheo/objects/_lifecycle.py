# -*- test-case-name: tests.unit.test_objects_domain,tests.unit.test_uploads -*-
"""
The object lifecycle: put, replace, remove, get, list and sweep, against an
L{IMetadataStore} and an L{IBlobStore}.  Nothing here knows HTTP: the web
layer decodes a request into the values of this module, calls L{Objects},
and turns its results and typed errors into answers.

An upload is a transaction over two stores that cannot share one: the uuid
is claimed (a row nobody sees), the blob streamed and committed, then the
row completed.  Meanwhile the store's handle of the write, if it gives one
(a GCS session's URL), is recorded in the claim, for whichever process
sweeps the claim should this one be killed.  Every failure undoes what was
done, in reverse, and a claim, a record or a clean-up is waited for to its
end even when the request that started it is cancelled (see L{_toTheEnd}).
"""

from __future__ import annotations

import secrets
import uuid as _uuid
from collections.abc import Coroutine, Mapping
from typing import Any, NoReturn, TypeVar, cast

from attrs import evolve, field, frozen
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._errors import (
    BlobMissing,
    BlobNotFound,
    BlobStoreError,
    ClaimLost,
    DatabaseError,
    DigestMismatch,
    NoSuchObject,
    SizeMismatch,
    TooLarge,
    Vanished,
)
from .._interfaces import (
    IBlobFile,
    IBlobSource,
    IBlobStore,
    IBlobWriter,
    IFileBlobStore,
    IMetadataStore,
    IRedirectableBlobStore,
)
from .._types import BlobInfo, Change, Claim, Label, Listing, NewBlob, StoredObject
from ..blobstores._verify import verifying
from ..blobstores._writer import CappedWriter
from ._cache import BlobCache, RecordCache
from ._sweep import CLAIM_LEASE, LEFTOVER_AGE, Swept, sweep

T = TypeVar("T")

#: How long a blob's commit in flight is waited for once its client has
#: gone (its last segment and the store's answer); then it is aborted, so
#: that a stalled store does not hold the request, its claim and its share
#: of memory for good.
COMMIT_GRACE = 60.0


@frozen
class IncomingBlob:
    """
    A blob about to be uploaded: its announced size (L{None} for a body
    without a length: its end tells), the digests its client stated (by
    hashlib name), and what its part said of itself.
    """

    size: int | None
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


def _token() -> str:
    """A claim's own token: 128 random bits."""
    return secrets.token_hex(16)


def blobKey(kind: str, uuid: str) -> str:
    """
    A fresh key, of the shape L{morpheo._kinds.BLOB_KEY}: a replaced blob
    never overwrites the one in use, and the sweep can tell that a key
    nothing points to will never be pointed to again.
    """
    return f"{kind}/{uuid}-{secrets.token_hex(6)}"


class Objects:
    """
    The stored objects of every kind.

    Every claim it makes is fenced by a token of its own and kept alive by
    L{keepAlive} while its upload runs; a claim not refreshed for
    C{claimLease} seconds is any process's to sweep (L{sweep}).  A release
    that fails (the database is down) is tried again at every sweep, and
    its claim is no longer refreshed meanwhile, so it expires even if this
    process never reaches the database again.

    Every blob's key is claimed (a pending row points to it) before a byte
    of the blob is written, and stays pointed to until its row is deleted
    or its claim released: what the sweep of unreferenced blobs relies on
    (see L{morpheo.objects._sweep.sweepLeftovers}).

    @param maxBlobSize: the largest blob taken, in bytes (L{None}: any).
    @param claimLease: how long a claim lives without a heartbeat, in
        seconds.
    @param orphanGrace: how old, in seconds, a leftover (an unreferenced
        blob, an unfinished write) must be for the sweep to remove it.
    @param records: where the records read are kept, for the reads that
        follow (L{get}); a change made here is forgotten there at once.
    @param blobCache: where small blobs read are kept, for the reads that
        follow (L{produce}).
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
        claimLease: float = CLAIM_LEASE,
        orphanGrace: float = LEFTOVER_AGE,
        records: RecordCache | None = None,
        blobCache: BlobCache | None = None,
    ) -> None:
        self.metadata = metadata
        self.blobs = blobs
        self.records = records
        self.blobCache = blobCache
        self.maxBlobSize = maxBlobSize
        self.claimLease = claimLease
        self.orphanGrace = orphanGrace
        self._reactor = reactor
        self._pool = pool
        #: The tokens of the claims this process's uploads hold now.
        self._live: set[str] = set()
        #: Claims whose release failed, by token: released at the next sweep.
        self._unreleased: dict[str, tuple[str, str]] = {}

    @property
    def reactor(self) -> IReactorFromThreads:
        """The reactor the lifecycle runs on (its clock too)."""
        return self._reactor

    # Reading

    async def get(self, kind: str, uuid: str) -> StoredObject:
        """
        The ready object, or L{NoSuchObject}, for a read: it may be the
        record kept from an earlier read (see L{RecordCache}).  What a
        change is checked against is L{current}.
        """
        records = self.records
        if records is None:
            return await self.current(kind, uuid)
        kept = records.get(kind, uuid)
        if kept is not None:
            return kept
        mark = records.mark()
        found = await self.current(kind, uuid)
        records.keep(found, mark)
        return found

    async def current(self, kind: str, uuid: str) -> StoredObject:
        """The ready object as the metadata store has it now, or L{NoSuchObject}."""
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
        """
        Stream C{length} bytes of C{stored}'s blob from C{offset} into
        C{consumer}; L{BlobMissing} if the store has no such blob.
        """
        cache = self.blobCache
        if cache is not None and cache.fits(stored.size):
            kept = cache.get(stored.blob_key)
            if kept is None:
                return self._produceKept(cache, stored, consumer, offset, length)
            consumer.write(kept[offset : offset + length])
            return succeed(None)
        d = self.blobs.produce(stored.blob_key, consumer, offset, length)
        return d.addErrback(self._missing, stored)

    def _produceKept(
        self, cache: BlobCache, stored: StoredObject, consumer: IConsumer, offset: int, length: int
    ) -> Deferred[None]:
        """A small blob read whole and kept, then its bytes asked for written."""
        whole = _Collected()

        def read(_: None) -> None:
            blob = b"".join(whole.parts)
            if len(blob) != stored.size:
                raise BlobStoreError(
                    f"the blob of {stored.kind} {stored.uuid} has {len(blob)} bytes,"
                    f" not {stored.size}"
                )
            cache.keep(stored.blob_key, blob)
            consumer.write(blob[offset : offset + length])

        d = self.blobs.produce(stored.blob_key, whole, 0, stored.size)
        return d.addErrback(self._missing, stored).addCallback(read)

    async def readable(self, stored: StoredObject) -> None:
        """
        Fail as a read of C{stored}'s blob would, without reading it:
        L{BlobMissing}, L{BlobStoreError} (a blob of another size than its
        row says cannot be served either).
        """
        if self.blobCache is not None and self.blobCache.get(stored.blob_key) is not None:
            return
        try:
            size = await self.blobs.stat(stored.blob_key)
        except BlobNotFound:
            raise BlobMissing(stored.kind, stored.uuid, stored.blob_key) from None
        if size != stored.size:
            raise BlobStoreError(
                f"the blob of {stored.kind} {stored.uuid} has {size} bytes, not {stored.size}"
            )

    async def openFile(self, stored: StoredObject) -> IBlobFile | None:
        """
        C{stored}'s blob opened as a file of this machine, for a download
        to send it from there (L{None} if the store keeps no files): fails
        as L{readable} would.
        """
        if not IFileBlobStore.providedBy(self.blobs):
            return None
        try:
            opened: IBlobFile = await self.blobs.openBlob(stored.blob_key)
        except BlobNotFound:
            raise BlobMissing(stored.kind, stored.uuid, stored.blob_key) from None
        if opened.size != stored.size:
            await opened.close()
            raise BlobStoreError(
                f"the blob of {stored.kind} {stored.uuid} has {opened.size} bytes,"
                f" not {stored.size}"
            )
        return opened

    def _missing(self, failure: Failure, stored: StoredObject) -> NoReturn:
        """A blob the store says is not there is a L{BlobMissing}, named by its object."""
        failure.trap(BlobNotFound)
        raise BlobMissing(stored.kind, stored.uuid, stored.blob_key)

    @property
    def redirectable(self) -> bool:
        """Whether the blob store can serve a download itself (L{downloadURL})."""
        return IRedirectableBlobStore.providedBy(self.blobs)

    def downloadURL(
        self, stored: StoredObject, lifetime: int, contentType: str, disposition: str
    ) -> Deferred[str]:
        """
        A URL of the blob store's that serves C{stored}'s blob to anyone,
        with that type and disposition, for C{lifetime} seconds.
        """
        store = IRedirectableBlobStore(self.blobs)
        return store.presignedURL(stored.blob_key, lifetime, contentType, disposition)

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
        are refused before a byte of the body is read, a blob of unknown
        size as soon as it grows past the maximum (see L{_writer}).
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
            token=_token(),
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
            info = await self._receive(claim, key, blob, source)
        except BaseException:
            await self._release(claim)
            raise
        try:
            stored, _ = await _toTheEnd(
                ensureDeferred(self.metadata.complete(new.kind, uuid, claim.token, info))
            )
        except ClaimLost:
            # Swept while this process stalled: the uuid may be another
            # upload's by now.  Only what this upload wrote goes (its key is
            # its own).
            await self._quietly(self.blobs.delete(key))
            raise
        finally:
            self._live.discard(claim.token)
        # Any other failure leaves the outcome unknown (the row may be
        # complete): the claim, no longer refreshed, expires, and whichever
        # sweep finds it still pending removes the blob with it.
        # What was kept of this uuid is of an object deleted elsewhere.
        self._forget(new.kind, uuid, None)
        return stored

    async def replace(
        self, current: StoredObject, change: Replacement, source: IBlobSource
    ) -> StoredObject:
        """
        Apply C{change} to C{current} at once: a new uuid is claimed first
        (L{Taken}), a new blob committed under a fresh key (claimed first
        too), then the row changed in one transaction (L{Vanished} if the
        object went away meanwhile, L{ClaimLost} if the claim was swept) and
        the old blob deleted.  C{source} is the rest of the request body,
        read to its end.
        """
        kind, uuid = current.kind, current.uuid
        renamed = change.newUUID if change.newUUID not in (None, uuid) else None
        key = blobKey(kind, change.newUUID or uuid) if change.blob is not None else None
        # The new uuid is claimed; a new blob is written under a claim too
        # (of a uuid of its own, never visible), which the change consumes:
        # until then no row would point to the blob, and a sweep could take
        # it for an orphan, or miss it if this process died.
        claim = None
        if renamed is not None or key is not None:
            claim = Claim(
                kind=kind, uuid=renamed or str(_uuid.uuid4()), blobKey=key, token=_token()
            )
            try:
                await self._claim(claim)
            except BaseException:
                source.stop()
                raise
        written = None
        try:
            newBlob = None
            if change.blob is not None and key is not None:
                info = await self._receive(claim, key, change.blob, source)
                written = key
                newBlob = NewBlob(key, info, change.blob.label)
            else:
                await source.done()
        except BaseException:
            await self._undo(claim, written)
            raise
        try:
            changed, _ = await _toTheEnd(
                ensureDeferred(
                    self.metadata.change(
                        kind,
                        uuid,
                        Change(
                            newUUID=change.newUUID,
                            claimed=(claim.uuid, claim.token) if claim is not None else None,
                            text=change.text,
                            blob=newBlob,
                        ),
                    )
                )
            )
        except NoSuchObject:
            await self._undo(claim, written)
            raise Vanished(kind, uuid) from None
        except ClaimLost:
            await self._undo(claim, written)
            raise
        finally:
            if claim is not None:
                self._live.discard(claim.token)
        # Any other failure leaves the outcome unknown: the new blob stays
        # for the sweep (removed once old enough if no row points to it),
        # the new uuid's claim expires.
        self._forget(current.kind, current.uuid, changed.oldBlobKey)
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
        self._forget(kind, uuid, removed.blob_key)
        await self._quietly(self.blobs.delete(removed.blob_key))
        return removed

    def _forget(self, kind: str, uuid: str, blobKey: str | None) -> None:
        """What is kept of an object changed here, and of its old blob."""
        if self.records is not None:
            self.records.forget(kind, uuid)
        if self.blobCache is not None and blobKey is not None:
            self.blobCache.forget(blobKey)

    async def _undo(self, claim: Claim | None, written: str | None) -> None:
        """A change known not to be made: remove what it wrote, release its claim."""
        if written is not None:
            await self._quietly(self.blobs.delete(written))
        if claim is not None:
            await self._release(claim)

    # Keeping claims alive, and sweeping what dead ones left

    async def keepAlive(self) -> None:
        """
        Refresh the claims of this process's uploads in progress.  One that
        is no longer held was swept while this process stalled: its upload
        will fail when it tries to complete.
        """
        live = sorted(self._live)
        held = await self.metadata.heartbeat(live)
        lost = [token for token in live if token not in held and token in self._live]
        # Lost for good: not refreshed again, nor warned about.
        self._live.difference_update(lost)
        if lost:
            self._log.warn(
                "{n} claim(s) of uploads in progress were swept as dead (this process"
                " stalled for longer than the claim lease): those uploads will fail",
                n=len(lost),
            )

    async def sweep(self, *, atStart: bool = False, leftovers: bool = True) -> Swept:
        """
        Release the claims whose release failed, then sweep what dead
        uploads left (see L{morpheo.objects._sweep}); with C{leftovers},
        the leftovers older than the grace period too.
        """
        for token, (kind, uuid) in list(self._unreleased.items()):
            await self.metadata.release(kind, uuid, token)
            del self._unreleased[token]
        return await sweep(
            self.metadata,
            self.blobs,
            self.claimLease,
            atStart=atStart,
            grace=self.orphanGrace,
            leftovers=leftovers,
        )

    # The transaction's steps

    async def _claim(self, claim: Claim) -> None:
        # Alive from before the claim reaches the database to its end.
        self._live.add(claim.token)
        try:
            _, cancelled = await _toTheEnd(ensureDeferred(self.metadata.claim(claim)))
        except BaseException:
            self._live.discard(claim.token)
            raise
        if cancelled:
            await self._release(claim)
            raise CancelledError()

    async def _release(self, claim: Claim) -> None:
        """
        Give C{claim} back; if the database cannot be told now, the next
        sweeps try again, and the claim, no longer refreshed, expires anyway.
        """
        self._live.discard(claim.token)
        try:
            await _toTheEnd(
                ensureDeferred(self.metadata.release(claim.kind, claim.uuid, claim.token))
            )
        except Exception:
            self._log.failure(
                "releasing the claim on {kind} {uuid} failed; trying again at the next sweep",
                kind=claim.kind,
                uuid=claim.uuid,
            )
            self._unreleased[claim.token] = (claim.kind, claim.uuid)

    def _writer(self, key: str, blob: IncomingBlob) -> IBlobWriter:
        writer = self.blobs.writer(key, blob.size)
        if blob.size is None and self.maxBlobSize is not None:
            writer = CappedWriter(writer, self.maxBlobSize)
        return verifying(writer, dict(blob.expected), self._reactor, self._pool)

    async def _receive(
        self, claim: Claim | None, key: str, blob: IncomingBlob, source: IBlobSource
    ) -> BlobInfo:
        """
        Stream the blob from C{source} and commit it, checked against the
        digests its client stated; abort or delete it on failure.  The
        write's handle is recorded in C{claim} meanwhile (L{_note}), and
        that is over before the claim is completed or released.
        """
        writer = self._writer(key, blob)
        noted = self._note(claim, writer)
        try:
            # Inside: a writer neither finished nor aborted would keep its
            # share of the store's memory budget for good.
            source.streamTo(writer)
            await source.done()
            info = await self._commit(writer)
        except SizeMismatch:
            await self._quietly(writer.abort())
            await _toTheEnd(noted)
            raise
        except BaseException:
            source.stop()
            await self._quietly(writer.abort())
            await _toTheEnd(noted)
            raise
        await _toTheEnd(noted)
        expected = blob.expected.get("sha256")
        if expected is not None and bytes.fromhex(info.sha256) != expected:
            # The store computes sha256 as it commits; no row points here yet.
            await self._quietly(self.blobs.delete(key))
            raise DigestMismatch("sha256")
        return info

    async def _commit(self, writer: IBlobWriter) -> BlobInfo:
        """
        C{writer}'s commit, once begun, waited for (up to L{COMMIT_GRACE}
        once the client has gone): cut short, its outcome would be unknown,
        and a blob committed after its claim was released would be nobody's
        until the orphan sweep.
        """
        clock = cast(IReactorTime, self._reactor)
        info, _ = await _toTheEnd(writer.finish(), (clock, COMMIT_GRACE))
        return info

    def _note(self, claim: Claim | None, writer: IBlobWriter) -> Deferred[None]:
        """
        Record in C{claim} the handle of C{writer}'s write as soon as the
        store has one (L{IBlobWriter.started}): were this process killed,
        the process that sweeps the claim removes what the write left (a
        GCS session nothing else finds).  A write without a handle costs no
        call.  A failure is logged, not raised: the upload goes on, and its
        claim expires all the same.  No cancellation reaches it (the
        request's does not: it is awaited through L{_toTheEnd}).
        """
        if claim is None:
            return succeed(None)

        async def note() -> None:
            handle = await writer.started()
            if handle is None:
                return
            try:
                await self.metadata.noteUpload(claim.kind, claim.uuid, claim.token, handle)
            except ClaimLost:
                self._log.warn(
                    "the claim on {kind} {uuid} was swept before its upload was recorded",
                    kind=claim.kind,
                    uuid=claim.uuid,
                )
            except Exception:
                self._log.failure(
                    "recording the upload of {kind} {uuid} in its claim failed: were this"
                    " process killed, what the upload left would stay until it expires",
                    kind=claim.kind,
                    uuid=claim.uuid,
                )

        return Deferred.fromCoroutine(note())

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


async def _toTheEnd(
    d: Deferred[T], grace: tuple[IReactorTime, float] | None = None
) -> tuple[T, bool]:
    """
    C{d}'s result, and whether the handler awaiting it was cancelled
    meanwhile.  Klein cancels the handler of a client that went away (the
    graceful stop cuts connections too), and a cancellation that reached a
    database write or a clean-up would abandon it with its outcome unknown:
    a claim made anyway would keep its uuid, a clean-up would be half done.
    So C{d} is waited for to its end; a failure of C{d} is raised.  With
    C{grace} (a clock and seconds), C{d} is cancelled that long after the
    handler was, if it has not ended by then.
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
            if not cancelled and grace is not None:
                clock, seconds = grace
                d.addTimeout(seconds, clock)
            cancelled = True
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result, cancelled


@implementer(IConsumer)
class _Collected:
    """A small blob's bytes, as its store writes them (never paused)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.parts.append(data)
