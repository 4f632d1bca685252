# -*- test-case-name: tests.unit.test_resumable,tests.integration.test_resumable -*-
"""
Resumable uploads: a resource's blob sent over many requests, maybe
through many nodes, resumed where a cut left it (tus 1.0 and the IETF
draft at C{/uploads}; the web layer decodes both into the values here).

An upload is a claim held for longer than a request: its uuid is claimed
at creation (the same rules as a plain upload: a taken uuid, a model's
missing algo, the maximum size) and the claim is kept by the upload's row
(L{IUploadMetadataStore}), not by heartbeats, until the upload is
finished, cancelled or expired.  Each request that appends holds the
upload's busy lease, so that two never append at once, and streams its
body into the store's appender (L{IResumableBlobStore.append}); whatever
reached the store when a request is cut stays, and the offset recorded
says so.  At the end the blob is concluded under its key, its sha256 is
known (a running hash while one node receives the requests in order, or
one more read of the blob), and the resource appears in one transaction,
exactly as a plain upload's does.

A partial upload (tus concatenation) claims nothing: once whole, it is
concluded under a key of its own (its row points to it, so no sweep takes
it for an orphan); a final upload streams its parts' blobs, in order,
into one new write, then removes them.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid as _uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from attrs import evolve, field, frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer, IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._errors import (
    ChecksumMismatch,
    ClaimLost,
    DigestMismatch,
    NoSuchUpload,
    OffsetMismatch,
    SizeMismatch,
    TooLarge,
    UploadConflict,
)
from .._interfaces import (
    IAppender,
    IBlobSource,
    IBlobWriter,
    IResumableBlobStore,
    IUploadMetadataStore,
)
from .._types import Appended, BlobInfo, Claim, Concat, Label, StoredObject, Upload
from ..blobstores._flow import ProducerGate
from ..blobstores._hasher import Hasher
from ._lifecycle import Objects, _token, _toTheEnd, blobKey
from ._sweep import CLAIM_LEASE

#: How long an unfinished upload lives after its last request, in seconds
#: (the default of C{--upload-expiry}).
UPLOAD_EXPIRY = 24 * 3600.0
#: How many unfinished uploads one user may have open at once (the default
#: of C{--max-open-uploads}).
MAX_OPEN_UPLOADS = 100
#: The kind whose key shape a partial upload's blob takes (it has no kind
#: of its own); never visible: only its row points to it.
_PARTIAL_KIND = "data"


@frozen
class NewUpload:
    """
    An upload to create: the resource it will be (C{kind} L{None} for a
    partial upload), its length if known, the sha256 its client stated,
    and its decoded C{Upload-Metadata}, kept to be given back.
    """

    kind: str | None
    length: int | None
    uuid: str | None = None
    text: Mapping[str, str] = field(factory=dict)
    parent: str | None = None
    label: Label = field(factory=Label)
    sha256: str | None = None
    metadata: Mapping[str, str] = field(factory=dict)
    concat: Concat = Concat.NONE


@frozen
class Chunk:
    """
    What one request appends: from C{offset}, C{size} bytes if its length
    is known, with the upload's C{length} if it says it now (a deferred
    length), a checksum of its own (hashlib name and digest), and with
    C{last} the upload's end (the IETF draft's C{Upload-Complete: ?1}).
    """

    offset: int
    size: int | None
    length: int | None = None
    checksum: tuple[str, bytes] | None = None
    last: bool = False


@frozen
class Progress:
    """Where an upload is after a request; C{stored} once it is a resource."""

    upload: Upload
    stored: StoredObject | None = None


@implementer(IPushProducer, IConsumer)
class _Tee:
    """
    Between a request body and an appender: passes every byte on, counts
    it, and feeds the hashers (in the pool); the body is paused while the
    appender has paused us or a hash is behind.
    """

    def __init__(
        self,
        appender: IAppender,
        hashers: Sequence[Hasher],
        gate: ProducerGate,
        start: int,
        maximum: int | None,
    ) -> None:
        self.appender = appender
        self.hashers = hashers
        self.gate = gate
        self.start = start
        self.maximum = maximum
        self.count = 0

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.gate.registerProducer(producer, streaming)
        self.appender.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        self.appender.unregisterProducer()
        self.gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self.maximum is not None and self.start + self.count + len(data) > self.maximum:
            raise TooLarge(self.maximum)
        self.appender.write(data)
        self.count += len(data)
        for hasher in self.hashers:
            hasher.update(data)

    def pauseProducing(self) -> None:
        self.gate.hold(self.appender)

    def resumeProducing(self) -> None:
        self.gate.letGo(self.appender)

    def stopProducing(self) -> None:
        if self.gate.producer is not None:
            self.gate.producer.stopProducing()


@implementer(IConsumer)
class _Digest:
    """A consumer that hashes a blob read back from the store (in the pool)."""

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self.gate = ProducerGate()
        self.hasher = Hasher(["sha256"], reactor, pool, self.gate)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.hasher.update(data)


class Resumable:
    """
    The resumable uploads, over the metadata and blob stores of C{objects}
    (which must provide L{IUploadMetadataStore} and L{IResumableBlobStore}:
    see L{available}).

    @param expiry: how long an unfinished upload lives after its last
        request, in seconds.
    @param limit: how many unfinished uploads a user may have open.
    @param lease: how long a request's busy lease lives unrefreshed
        (L{keepAlive} refreshes those of this process's requests).
    """

    _log = Logger()

    def __init__(
        self,
        objects: Objects,
        *,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        expiry: float = UPLOAD_EXPIRY,
        limit: int | None = MAX_OPEN_UPLOADS,
        lease: float = CLAIM_LEASE,
    ) -> None:
        self.objects = objects
        self.expiry = expiry
        self.limit = limit
        self.lease = lease
        self._reactor = reactor
        self._pool = pool
        #: The busy leases this process's requests hold now.
        self._busy: set[str] = set()
        #: The running sha256 of the uploads this node received in order:
        #: the offset it covers, and the hash.
        self._hashes: dict[str, tuple[int, Any]] = {}

    @property
    def available(self) -> bool:
        """Whether both stores keep resumable uploads."""
        return IUploadMetadataStore.providedBy(
            self.objects.metadata
        ) and IResumableBlobStore.providedBy(self.objects.blobs)

    @property
    def _metadata(self) -> IUploadMetadataStore:
        store: IUploadMetadataStore = self.objects.metadata  # type: ignore[assignment]
        return store

    @property
    def _blobs(self) -> IResumableBlobStore:
        store: IResumableBlobStore = self.objects.blobs  # type: ignore[assignment]
        return store

    # Creating

    async def create(self, owner: str, new: NewUpload) -> Upload:
        """
        A new upload of C{owner}'s: its uuid claimed (L{Taken},
        L{NoSuchParent}), its length admitted (L{TooLarge}), at most
        C{limit} open (L{TooManyUploads}).
        """
        self.objects.admit(new.length)
        claim = None
        if new.kind is None:
            key = blobKey(_PARTIAL_KIND, str(_uuid.uuid4()))
            uuid = None
        else:
            uuid = new.uuid or str(_uuid.uuid4())
            key = blobKey(new.kind, uuid)
            claim = Claim(
                kind=new.kind,
                uuid=uuid,
                blobKey=key,
                token=_token(),
                text=new.text,
                parent=new.parent,
                label=new.label,
            )
        state, _ = await _toTheEnd(self._blobs.begin(key, new.length))
        upload = Upload(
            id=secrets.token_urlsafe(16),
            owner=owner,
            blobKey=key,
            state=state,
            expires=0.0,
            kind=new.kind,
            uuid=uuid,
            token=claim.token if claim is not None else None,
            length=new.length,
            concat=new.concat,
            metadata=new.metadata,
            sha256=new.sha256,
        )
        try:
            made, _ = await _toTheEnd(
                ensureDeferred(self._metadata.openUpload(upload, claim, self.limit, self.expiry))
            )
        except BaseException:
            await self.objects._quietly(self._blobs.cancel(key, state))
            raise
        self._hashes[made.id] = (0, hashlib.sha256())
        return made

    def remaining(self, upload: Upload) -> int:
        """The whole seconds C{upload} has left before it expires."""
        now: float = self._reactor.seconds()  # type: ignore[attr-defined]
        return max(0, int(upload.expires - now))

    async def get(self, owner: str, uploadId: str) -> Upload:
        """C{owner}'s upload, or L{NoSuchUpload} (another's too)."""
        found = await self._metadata.getUpload(uploadId)
        if found is None or found.owner != owner:
            raise NoSuchUpload(uploadId)
        return found

    # Appending

    async def append(
        self, owner: str, uploadId: str, chunk: Chunk, source: IBlobSource
    ) -> Progress:
        """
        Append C{source}'s bytes to the upload, holding its busy lease
        (L{UploadBusy}).  A request cut short keeps what reached the store,
        and its new offset is recorded before its failure is raised; a
        chunk that does not match its checksum is dropped
        (L{ChecksumMismatch}).  The upload's last bytes make it a resource.
        """
        busy = _token()
        self._busy.add(busy)
        try:
            try:
                upload = await self._metadata.takeUpload(uploadId, owner, busy, self.lease)
            except BaseException:
                source.stop()
                raise
            try:
                return await self._append(upload, busy, chunk, source)
            finally:
                await self.objects._quietly(self._metadata.leaveUpload(uploadId, busy))
        finally:
            self._busy.discard(busy)

    def _end(self, upload: Upload, chunk: Chunk) -> int | None:
        """The upload's length as this request makes it known, checked."""
        length = upload.length
        for said in (
            chunk.length,
            chunk.offset + chunk.size if chunk.last and chunk.size is not None else None,
        ):
            if said is None:
                continue
            if length is not None and said != length:
                raise UploadConflict(
                    f"the upload is {length} bytes long, not {said}: a length cannot change"
                )
            length = said
        if length is not None:
            if length < chunk.offset:
                raise UploadConflict(f"a length of {length} is shorter than the bytes received")
            if chunk.size is not None and chunk.offset + chunk.size > length:
                raise UploadConflict(
                    f"this request's {chunk.size} bytes go past the upload's length of {length}"
                )
        return length

    async def _append(
        self, upload: Upload, busy: str, chunk: Chunk, source: IBlobSource
    ) -> Progress:
        try:
            if upload.concat is Concat.FINAL:
                raise UploadConflict("a final upload is made of its parts: nothing is appended")
            if upload.concluded:
                raise UploadConflict("this upload is complete: nothing more is appended")
            if chunk.offset != upload.offset:
                raise OffsetMismatch(upload.offset, chunk.offset)
            end = self._end(upload, chunk)
            self.objects.admit(end)
        except BaseException:
            source.stop()
            raise
        running = self._hashes.get(upload.id)
        total = running[1].copy() if running is not None and running[0] == upload.offset else None
        gate = ProducerGate()
        hashers = []
        if total is not None:
            hashers.append(
                Hasher(["sha256"], self._reactor, self._pool, gate, start={"sha256": total})
            )
        chunkHash = None
        if chunk.checksum is not None:
            chunkHash = Hasher([chunk.checksum[0]], self._reactor, self._pool, gate)
            hashers.append(chunkHash)
        appender = self._blobs.append(
            upload.blobKey, upload.state, upload.offset, end, revocable=chunk.checksum is not None
        )
        tee = _Tee(appender, hashers, gate, upload.offset, self.objects.maxBlobSize)
        cut: BaseException | None = None
        try:
            # A body only registers with, writes to and unregisters from
            # what it streams to: a consumer is all it needs.
            source.streamTo(cast(IBlobWriter, tee))
            await source.done()
        except BaseException as e:
            cut = e
            source.stop()
        appended: Appended
        if cut is None and chunkHash is not None and chunk.checksum is not None:
            digests, _ = await _toTheEnd(chunkHash.digests())
            if digests[chunk.checksum[0]] != chunk.checksum[1]:
                await _toTheEnd(appender.close(False))
                raise ChecksumMismatch(chunk.checksum[0])
        appended, _ = await _toTheEnd(appender.close(True))
        if total is not None:
            await _toTheEnd(hashers[0].digests())
            if appended.offset == upload.offset + tee.count:
                self._hashes[upload.id] = (appended.offset, total)
            else:
                self._hashes.pop(upload.id, None)
        else:
            self._hashes.pop(upload.id, None)
        if cut is None and chunk.last and end is None:
            end = appended.offset
        if cut is None and chunk.last and end != appended.offset:
            raise SizeMismatch(end or 0, appended.offset)
        whole = end is not None and appended.offset == end
        if not whole:
            recorded, _ = await _toTheEnd(
                ensureDeferred(
                    self._metadata.recordUpload(
                        upload.id, busy, appended.state, appended.offset, end, False, self.expiry
                    )
                )
            )
            if cut is not None:
                raise cut
            return Progress(recorded)
        assert end is not None
        upload = evolve(upload, state=appended.state, offset=appended.offset, length=end)
        return await self._finish(upload, busy)

    # Finishing

    async def _finish(self, upload: Upload, busy: str) -> Progress:
        """
        The upload's bytes are all in: commit its blob under its key, know
        its sha256, and make it a resource (or, for a partial upload, keep
        it for its final one).  A stated sha256 that does not match drops
        the upload (L{DigestMismatch}).
        """
        size = upload.length
        assert size is not None
        await _toTheEnd(self._blobs.conclude(upload.blobKey, upload.state, size))
        if upload.concat is Concat.PARTIAL:
            recorded, _ = await _toTheEnd(
                ensureDeferred(
                    self._metadata.recordUpload(
                        upload.id, busy, upload.state, size, size, True, self.expiry
                    )
                )
            )
            self._hashes.pop(upload.id, None)
            return Progress(recorded)
        sha256 = await self._sha256(upload, size)
        if upload.sha256 is not None and sha256 != upload.sha256:
            await self.objects._quietly(self._blobs.delete(upload.blobKey))
            await self.objects._quietly(self._metadata.dropUpload(upload.id, busy))
            raise DigestMismatch("sha256")
        try:
            stored, _ = await _toTheEnd(
                ensureDeferred(self._metadata.finishUpload(upload.id, busy, BlobInfo(size, sha256)))
            )
        except ClaimLost:
            await self.objects._quietly(self._blobs.delete(upload.blobKey))
            raise
        return Progress(evolve(upload, concluded=True), stored)

    async def _sha256(self, upload: Upload, size: int) -> str:
        """The blob's sha256: the running hash if this node saw every byte
        in order, else read back from the store."""
        running = self._hashes.pop(upload.id, None)
        if running is not None and running[0] == size:
            return str(running[1].hexdigest())
        digest = _Digest(self._reactor, self._pool)
        await _toTheEnd(self._blobs.produce(upload.blobKey, digest))
        digests, _ = await _toTheEnd(digest.hasher.digests())
        return digests["sha256"].hex()

    # Ending

    async def cancel(self, owner: str, uploadId: str) -> None:
        """Remove the upload and what it wrote (L{NoSuchUpload}, L{UploadBusy})."""
        busy = _token()
        upload = await self._metadata.takeUpload(uploadId, owner, busy, self.lease)
        try:
            await _toTheEnd(self._remove(upload))
        finally:
            await self.objects._quietly(self._metadata.dropUpload(uploadId, busy))
        self._hashes.pop(uploadId, None)

    def _remove(self, upload: Upload) -> Deferred[None]:
        if upload.concluded:
            return self._blobs.delete(upload.blobKey)
        return self._blobs.cancel(upload.blobKey, upload.state)

    async def concatenate(self, owner: str, new: NewUpload, parts: Sequence[str]) -> StoredObject:
        """
        A final upload: C{owner}'s partial uploads C{parts}, each complete
        (L{UploadConflict}), joined in order into the resource C{new}
        describes, then removed.
        """
        if new.kind is None:
            raise UploadConflict("a final upload needs the kind of its resource")
        if not parts:
            raise UploadConflict("a final upload needs at least one partial upload")
        if len(set(parts)) != len(parts):
            raise UploadConflict("a final upload names one of its parts twice")
        busy = _token()
        self._busy.add(busy)
        held: list[Upload] = []
        try:
            for partId in parts:
                part = await self._metadata.takeUpload(partId, owner, busy, self.lease)
                held.append(part)
                if part.concat is not Concat.PARTIAL:
                    raise UploadConflict("a final upload is made of partial uploads only")
                if not part.concluded:
                    raise UploadConflict("a final upload's parts must all be complete first")
            total = sum(p.length or 0 for p in held)
            self.objects.admit(total)
            if new.length is not None and new.length != total:
                raise UploadConflict(f"the parts hold {total} bytes, not {new.length}")
            stored = await self._join(new, held, total)
            for part in held:
                await self.objects._quietly(self._blobs.delete(part.blobKey))
                await self.objects._quietly(self._metadata.dropUpload(part.id, busy))
            held = []
            return stored
        finally:
            for part in held:
                await self.objects._quietly(self._metadata.leaveUpload(part.id, busy))
            self._busy.discard(busy)

    async def _join(self, new: NewUpload, parts: Sequence[Upload], total: int) -> StoredObject:
        assert new.kind is not None
        uuid = new.uuid or str(_uuid.uuid4())
        key = blobKey(new.kind, uuid)
        claim = Claim(
            kind=new.kind,
            uuid=uuid,
            blobKey=key,
            token=_token(),
            text=new.text,
            parent=new.parent,
            label=new.label,
        )
        await self.objects._claim(claim)
        try:
            writer = self._blobs.writer(key, total)
            try:
                for part in parts:
                    await _toTheEnd(self._blobs.produce(part.blobKey, writer))
                info = await self.objects._commit(writer)
            except BaseException:
                await self.objects._quietly(writer.abort())
                raise
            if new.sha256 is not None and info.sha256 != new.sha256:
                await self.objects._quietly(self._blobs.delete(key))
                raise DigestMismatch("sha256")
        except BaseException:
            await self.objects._release(claim)
            raise
        try:
            stored, _ = await _toTheEnd(
                ensureDeferred(self.objects.metadata.complete(new.kind, uuid, claim.token, info))
            )
        except ClaimLost:
            await self.objects._quietly(self._blobs.delete(key))
            raise
        finally:
            self.objects._live.discard(claim.token)
        return stored

    # Keeping alive, and sweeping

    async def keepAlive(self) -> None:
        """Refresh the busy leases of this process's requests in progress."""
        if self._busy and self.available:
            await self._metadata.refreshUploads(sorted(self._busy), self.lease)

    async def sweep(self) -> int:
        """Remove the expired uploads and what they wrote; how many."""
        if not self.available:
            return 0
        busy = _token()
        expired = await self._metadata.takeExpiredUploads(busy, self.lease)
        for upload in expired:
            await self._remove(upload)
            await self._metadata.dropUpload(upload.id, busy)
            self._hashes.pop(upload.id, None)
        if expired:
            self._log.info("swept {n} expired uploads", n=len(expired))
        return len(expired)
