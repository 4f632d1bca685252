# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
The contracts between the layers.

The domain layer (L{morpheo.objects}) drives a metadata store
(L{IMetadataStore}: PostgreSQL, or in memory) and a blob store
(L{IBlobStore}: local disk, S3, Google Cloud Storage, in memory), and reads
uploads from an L{IBlobSource} the web layer hands it; it never knows which
implementation it talks to.  The remote stores can also hand a download to
the client (L{IRedirectableBlobStore}); the local store can hand its
files to the web layer, to be sent with C{sendfile} (L{IFileBlobStore}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

#: How many keys a page of L{ISweepableBlobStore.listKeys} holds at most,
#: unless told otherwise: what S3 and Google Cloud Storage list at once.
KEY_PAGE = 1000

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Sequence

    from twisted.internet.defer import Deferred

    from ._types import (
        Appended,
        BlobInfo,
        Change,
        Changed,
        Claim,
        DeadClaim,
        Listing,
        StoredObject,
        Upload,
    )


class IBlobWriter(IConsumer):
    """
    One blob being written.

    Bytes arrive through C{write}; a push producer registered with
    C{registerProducer} is paused while the writer's bounded buffer is full
    and resumed when it drains, which is how the socket stops being read
    when the store is slower than the client.  Nothing is visible under the
    key until L{finish} has fired.
    """

    key = Attribute("The key the blob is committed under.")

    def started() -> Deferred[str | None]:
        """
        Fires once the store holds something of this write that would
        outlive this process and that only a handle finds (a Google Cloud
        Storage resumable session, known by its URL alone), with that
        handle: an opaque string, for L{IAbandonableBlobStore.abandon} to
        remove what a killed process left.  Fires with L{None} when there
        is nothing to record: a write that needs no handle (a local
        temporary file is swept by its name, an S3 multipart upload is
        listed by its key, memory goes with the process), or one that ended
        before it began.  Never fails, and fires at the latest when
        L{finish} or L{abort} does; each call gives a L{Deferred} of its own.
        """

    def finish() -> Deferred[BlobInfo]:
        """
        Flush, check that exactly the announced size arrived (if one was),
        and commit the blob atomically under its key.

        @return: fires with the blob's L{BlobInfo}; on any failure the blob
            is gone and the L{Deferred} fails.
        """

    def abort() -> Deferred[None]:
        """
        Drop everything written so far; nothing is left behind.  Safe to
        call at any time and more than once, also after a failed L{finish}.
        """


class IBlobStore(Interface):
    """
    Where blobs live.  Keys are opaque relative paths such as
    C{"problem/1f01d777-....3f2a91c0"}.
    """

    name = Attribute("A short name for logs and errors, e.g. C{'local'}.")
    remote = Attribute(
        "Whether the store is another service (S3, GCS): its failures are a bad"
        " gateway (502), those of a local disk or memory an internal error (500)."
    )
    shared = Attribute(
        "Whether other live processes may write to the store too (a bucket; a directory"
        " every node mounts): then what is young in it may be theirs, even at start-up."
    )

    def writer(key: str, size: int | None) -> IBlobWriter:
        """
        Start writing a blob of exactly C{size} bytes under C{key}; with
        C{size} L{None} (a request body without a length), of whatever
        arrives until L{IBlobWriter.finish}, up to the most the store takes
        in one blob (beyond it C{write} raises L{TooLarge}).
        """

    def produce(
        key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        """
        Stream C{length} bytes of the blob (all of it when L{None}) starting
        at C{offset} into C{consumer}, registering a push producer with it so
        that the consumer's pauses stop the reading.

        @return: fires when the last byte has been written to C{consumer}
            (the producer is then unregistered); fails with
            L{BlobNotFound} if there is no such blob.  Cancelling it stops
            the transfer.
        """

    def stat(key: str) -> Deferred[int]:
        """
        Find out, without reading it, that the blob under C{key} is there
        and readable now: fires with its size in bytes, fails with
        L{BlobNotFound} if there is no such blob, with L{BlobStoreError} if
        the store cannot tell.  A HEAD asks, so that it never promises a
        blob a GET could not serve.
        """

    def delete(key: str) -> Deferred[None]:
        """
        Remove a blob.  Deleting a missing key is not an error.
        """

    def check() -> Deferred[None]:
        """
        Fail if the store cannot be used right now (for readiness checks and
        start-up).
        """


class IAbandonableBlobStore(IBlobStore):
    """
    A blob store where an unfinished write leaves more than L{IBlobStore.delete}
    removes (an S3 multipart upload, a GCS resumable session): what a dead
    process left under a key is removed with L{abandon}.
    """

    def abandon(key: str, handle: str | None = None) -> Deferred[None]:
        """
        Remove everything a write under C{key} may have left: the blob if it
        was committed, any unfinished upload to it.  C{handle} is what the
        write's L{IBlobWriter.started} gave, if it was recorded: read back
        from the database, it is data, and a store acts on it only if it is
        one of its own (a session URL on its own endpoint).  Removing
        nothing is not an error.
        """


class IAppender(IConsumer):
    """
    One request's bytes added to a resumable write
    (L{IResumableBlobStore.append}).  Like an L{IBlobWriter}, it pauses its
    producer while its bounded buffer is full; unlike one, what it has
    written is not lost when the request is cut: L{close} makes it part of
    the write.
    """

    def close(keep: bool = True) -> Deferred[Appended]:
        """
        The request's bytes ended, or stopped (a cut connection, a client
        gone): with C{keep}, make every byte written so far part of the
        write, durably, and fire with the write's new state and offset (a
        store that sends fixed parts stages a shorter tail, so that no byte
        that reached this node is lost and no chunk size is refused).
        Without C{keep} (a checksum that did not match), drop this
        appender's bytes and fire with the state and offset from before.
        Fails with L{BlobStoreError} if the store failed; the state from
        before is then still valid, but the store may hold fewer bytes of
        this request than were sent.  Called once.
        """


class IResumableBlobStore(IBlobStore):
    """
    A blob store where one blob is written over many requests, possibly
    through many nodes: an upload that goes on where a cut left it.

    What the store keeps of such a write between requests is described by
    its I{state}: an opaque text (a few KiB at most) that the caller keeps
    in the database and hands back to the next call, so that with a remote
    store any node can take the next request.  A state read back from the
    database is data: a store acts only on what is its own (its bucket, its
    endpoint, its directory, that key).  Nothing is visible under the key
    until L{conclude}.
    """

    def begin(key: str, size: int | None) -> Deferred[str]:
        """
        Start a resumable write of a blob of C{size} bytes (L{None}: not
        known yet) to be committed under C{key}; fires with its first
        state, which holds 0 bytes.
        """

    def append(
        key: str, state: str, offset: int, end: int | None = None, revocable: bool = False
    ) -> IAppender:
        """
        Go on with the write described by C{state}, which holds C{offset}
        bytes (the caller has checked the client's offset against it).
        With C{end}, the blob is C{end} bytes long, so that once the store
        holds them all the appender sends its tail as the last part; without
        it, more may follow.  With C{revocable}, the caller may drop this
        request's bytes at the end (L{IAppender.close} with C{keep} false):
        a store that cannot take back what it sent holds them apart until
        then.
        """

    def conclude(key: str, state: str, size: int) -> Deferred[None]:
        """
        Commit the C{size} bytes the write holds under C{key}, atomically
        and durably (a local file is fsynced); what the write kept apart is
        removed.  Fails with L{SizeMismatch} if the write holds another
        count, with L{BlobStoreError} if the store failed (the write is then
        left as it was, for L{cancel}).
        """

    def cancel(key: str, state: str) -> Deferred[None]:
        """
        Remove everything the write left: the temporary file, the multipart
        upload and its parts, the session, the staged tails.  Removing
        nothing is not an error; safe to call more than once.
        """


class IRedirectableBlobStore(IBlobStore):
    """
    A blob store that serves a blob itself to whoever holds a URL it made
    (an S3 presigned URL, a Google Cloud Storage signed URL), so that a
    download can skip the service: its client is redirected there.
    """

    maxRedirectLifetime = Attribute(
        "The longest lifetime, in seconds, the store accepts for such a URL."
    )

    def presignedURL(key: str, lifetime: int, contentType: str, disposition: str) -> Deferred[str]:
        """
        A URL at which a plain GET, without credentials, gets the blob under
        C{key} for C{lifetime} seconds (at most L{maxRedirectLifetime}),
        ranges included, answered with C{Content-Type: contentType} and
        C{Content-Disposition: disposition} (those are part of what is
        signed, so the client cannot change them).

        @return: fires with the URL, or fails with L{BlobStoreError} when
            the store's credentials cannot make one.  Nothing is asked of
            the store: a missing blob shows when the URL is used.
        """


class ISweepableBlobStore(IBlobStore):
    """
    A blob store that can list what it holds, so that what a crash left
    behind (unfinished writes, blobs no row points to) can be swept.
    """

    def sweepTemporary(olderThan: float = 0.0) -> Deferred[list[str]]:
        """
        Remove unfinished writes last touched more than C{olderThan}
        seconds ago; fires with what was removed.
        """

    def listKeys(
        olderThan: float = 0.0, pageSize: int = KEY_PAGE
    ) -> AsyncGenerator[list[str], None]:
        """
        The keys of the service's committed blobs last modified more than
        C{olderThan} seconds ago, in pages of at most C{pageSize} keys:
        never every key at once, and each page fetched only when the
        previous one has been dealt with (its keys may be deleted first).

        Only keys of the service's shape are listed
        (L{morpheo._kinds.isBlobKey}): whatever else shares the bucket or
        the directory is not the service's.  A blob committed or removed
        while the listing runs may or may not be in it.  Fails with
        L{BlobStoreError} when the store cannot be listed; close it
        (C{aclose}) when not read to its end.
        """


class IBlobFile(Interface):
    """
    A blob opened for reading as a file of this machine: what a download
    needs to send it from the file to the socket itself (C{sendfile}),
    without its bytes passing through the process.
    """

    size = Attribute("The file's size in bytes, as it was opened.")

    def fileno() -> int:
        """The open file's descriptor, valid until L{close}."""

    def inThread(f: Callable[..., object], *args: object) -> Deferred[Any]:
        """Run C{f(*args)} in the pool the store does its file work in."""

    def close() -> Deferred[None]:
        """Close the file (in that pool); once, when the download is over."""


class IFileBlobStore(IBlobStore):
    """
    A blob store whose blobs are files of this machine (the local store):
    a download over a plain TCP connection can go from the file straight
    to the socket.  L{IBlobStore.produce} stays the way everywhere else.
    """

    def openBlob(key: str) -> Deferred[IBlobFile]:
        """
        The blob under C{key}, opened for reading; fails with
        L{BlobNotFound} if there is none, L{BlobStoreError} if it cannot
        be opened.
        """


class IBlobSource(Interface):
    """
    The blob of an upload, as the request body brings it: streamed into a
    writer once the domain layer has accepted the upload.
    """

    def streamTo(writer: IBlobWriter) -> None:
        """
        Start writing the blob's bytes into C{writer} (registering the body
        as its producer, so that the writer's pauses pause the socket).
        """

    def done() -> Deferred[None]:
        """
        Fires once every byte of the blob has been written into the writer
        and the body has ended; fails with why it could not (L{SizeMismatch},
        a malformed body, a client gone).
        """

    def stop() -> None:
        """
        The upload is refused or failed: read no more of the body.
        """


class IMetadataStore(Interface):
    """
    Where the objects' metadata rows live.  A uuid is first I{claimed}
    (reserved while its blob uploads; readers never see it), then
    I{completed} once its blob is committed, or I{released}.

    Outcomes are typed: a method either returns its value or fails with
    one of the exceptions of L{morpheo._types} it names, or with
    L{DatabaseError} when the store itself failed.  Its methods are
    coroutines (C{async def}), awaited by the domain layer.
    """

    owner = Attribute(
        "The name of the node in the claims it makes: kept across restarts by a"
        " node with a data directory (its new run takes the claims of the run"
        " before), new at each start for a stateless node."
    )

    async def ping() -> None:
        """Fail with L{DatabaseError} if the store cannot be used right now."""

    async def claim(claim: Claim) -> None:
        """
        Reserve C{claim.uuid}.  Fails with L{Taken} if the uuid is taken or
        being uploaded, with L{NoSuchParent} if the kind has a parent and
        C{claim.parent} names no ready object (the parent is held until the
        claim is made, so that it cannot be deleted meanwhile).
        """

    async def release(kind: str, uuid: str, token: str) -> None:
        """
        Give back the claim C{token} holds on a uuid.  A claim not (or no
        longer) held by C{token} is left alone, and is not an error.
        """

    async def complete(kind: str, uuid: str, token: str, blob: BlobInfo) -> StoredObject:
        """
        Make the claim C{token} holds a visible object now that its blob is
        committed; it takes the next place in the completion order and the
        time of now.  Fails with L{ClaimLost} if C{token} no longer holds it
        (it was swept as dead, and maybe claimed again by another upload).
        """

    async def get(kind: str, uuid: str) -> StoredObject | None:
        """The ready object of that kind and uuid, or L{None}."""

    async def list(kind: str, listing: Listing) -> list[StoredObject]:
        """The ready objects of C{kind} that C{listing} asks for, newest first."""

    async def delete(kind: str, uuid: str) -> StoredObject:
        """
        Delete a ready object's row and return it; the caller deletes its
        blob after (never a row without its blob).  Fails with
        L{NoSuchObject}, or with L{InUse} naming (some of) the children
        that still use it.
        """

    async def change(kind: str, uuid: str, change: Change) -> Changed:
        """
        Apply C{change} in one transaction, consuming the claim
        C{change.claimed} (a new uuid must have been claimed first; its
        claim becomes the object).  A new blob's key was claimed before it
        was written, by the new uuid's claim or by a claim of its own: that
        claim goes in the same transaction, so that the key is always
        pointed to, by the claim and then by the row.  Fails with
        L{NoSuchObject} if the object is gone, with L{ClaimLost} if the
        claim is.
        """

    async def noteUpload(kind: str, uuid: str, token: str, handle: str) -> None:
        """
        Record in the claim C{token} holds the handle of the store's write
        in progress (L{IBlobWriter.started}), so that whichever process
        sweeps the claim, were this one killed, can remove what the write
        left (L{DeadClaim.handle}).  Fails with L{ClaimLost} if C{token} no
        longer holds the claim.
        """

    async def heartbeat(tokens: Sequence[str]) -> set[str]:
        """
        Say that the claims held by C{tokens} are alive; fires with the
        tokens that still held one (the others were swept).
        """

    async def takeDeadClaims(lease: float, mine: bool = False) -> Sequence[DeadClaim]:
        """
        Take over the claims nobody keeps alive: not refreshed for C{lease}
        seconds, and with C{mine} every claim of this owner and of the
        owners named under it (C{owner/...}: the workers of a process run
        with C{--workers}), at start-up, when they can only be a dead
        run's.  Each is given a new token at
        once, in one statement, so that its first holder, were it only
        stalled, can no longer complete, release or refresh it, and two
        sweeping processes never both take one.  Each comes with the
        handle L{noteUpload} recorded, if any.
        """

    async def referencedKeys(keys: Sequence[str]) -> set[str]:
        """Which of C{keys} a row (ready or claimed) points to."""


class IChangeObserver(Interface):
    """
    Told of the changes to ready records, whichever node (or operator) made
    them, by what hears the metadata store's notifications
    (L{morpheo.metadata.ChangeListener}); what it is not told while deaf,
    it never will be.
    """

    def changed(kind: str, uuid: str) -> None:
        """The record of C{kind} C{uuid} changed or went away."""

    def listening() -> None:
        """The changes are heard from now on."""

    def deaf() -> None:
        """The changes are no longer heard (the link to the store broke)."""


class IUploadMetadataStore(IMetadataStore):
    """
    A metadata store that keeps resumable uploads (L{Upload}) between
    their requests.  An upload's claim (its resource's uuid) lives as long
    as its upload: L{IMetadataStore.takeDeadClaims} never takes it, and
    L{IMetadataStore.referencedKeys} counts an upload's key as pointed to.
    A request that appends holds the upload's I{busy lease} (a token of
    its own, for C{lease} seconds unless refreshed): no two hold it at once.
    Unexpired uploads only are found; times are the database's.
    """

    async def openUpload(
        upload: Upload, claim: Claim | None, limit: int | None, lifetime: float
    ) -> Upload:
        """
        Record a new upload (and make C{claim}, in the same transaction),
        expiring in C{lifetime} seconds; fires with it as recorded.  Fails
        with L{Taken} or L{NoSuchParent} as a claim does, with
        L{TooManyUploads} if its owner has C{limit} open already.
        """

    async def getUpload(uploadId: str) -> Upload | None:
        """The upload, unless it expired."""

    async def takeUpload(uploadId: str, owner: str, busy: str, lease: float) -> Upload:
        """
        Take the upload's busy lease with the token C{busy}; L{NoSuchUpload}
        if there is none of C{owner}'s of that id, L{UploadBusy} if another
        request holds its lease.
        """

    async def recordUpload(
        uploadId: str,
        busy: str,
        state: str,
        offset: int,
        length: int | None,
        concluded: bool,
        lifetime: float,
    ) -> Upload:
        """
        Record where the upload is after a request (and its length, once
        known), push its expiry to C{lifetime} seconds from now, and give
        the lease back.  L{UploadLost} if C{busy} no longer holds it.
        """

    async def leaveUpload(uploadId: str, busy: str) -> None:
        """Give the lease back, changing nothing; not an error if lost."""

    async def refreshUploads(busy: Sequence[str], lease: float) -> set[str]:
        """Extend the leases C{busy} hold; fires with those still held."""

    async def finishUpload(uploadId: str, busy: str, blob: BlobInfo) -> StoredObject:
        """
        In one transaction: complete the upload's claim with C{blob} (its
        resource appears) and remove the upload.  L{UploadLost} if C{busy}
        no longer holds its lease, L{ClaimLost} if its claim is gone.
        """

    async def dropUpload(uploadId: str, busy: str) -> None:
        """Remove the upload and release its claim, if C{busy} holds its lease."""

    async def takeExpiredUploads(busy: str, lease: float) -> Sequence[Upload]:
        """
        Take the busy lease, with C{busy}, of every expired upload no live
        request holds, for the sweep to remove what it wrote and drop it.
        """
