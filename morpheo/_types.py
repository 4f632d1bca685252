"""
Value types shared by the layers: what a blob is once written, what an
object is once stored, and what the domain layer asks of a metadata store
(the typed outcomes are in L{morpheo._errors}).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from attrs import field, frozen

from ._kinds import TABLE


@frozen
class BlobInfo:
    """What a committed blob is: its length and its sha256, hex."""

    size: int
    sha256: str


@frozen
class Appended:
    """
    Where a resumable write is after one request's bytes
    (L{morpheo._interfaces.IAppender.close}): its new C{state}, to keep in
    the database for the next request, and the C{offset} the store now
    holds, which is what the client is told to resume from.
    """

    state: str
    offset: int


@frozen
class StoredObject:
    """
    One stored object: its metadata row.  C{blob_key} is where its blob
    lives in the blob store; it is never shown to clients.  C{text} holds
    the kind's text fields (see L{morpheo._kinds}), C{parent} the uuid of
    the object it belongs to (a model's algo).
    """

    kind: str
    uuid: str
    timestamp_upload: int
    size: int
    sha256: str
    blob_key: str
    text: Mapping[str, str | None] = field(factory=dict)
    parent: str | None = None
    content_type: str | None = None
    filename: str | None = None
    #: The completion order: lists are newest first by it, and cursors
    #: point into it.
    seq: int = 0

    @property
    def name(self) -> str | None:
        return self.text.get("name")

    @property
    def description(self) -> str | None:
        return self.text.get("description")

    @property
    def algo(self) -> str | None:
        return self.parent if TABLE[self.kind].parent == "algo" else None

    def asJSON(self) -> dict[str, Any]:
        """The contract's JSON for this kind: only the keys it defines."""
        kind = TABLE[self.kind]
        out: dict[str, Any] = {"uuid": self.uuid, "timestamp_upload": self.timestamp_upload}
        for name in kind.text:
            out[name] = self.text.get(name)
        if kind.parent is not None:
            out[kind.parent] = self.parent
        out["size"] = self.size
        out["sha256"] = self.sha256
        return out


#: The name this row had before L{StoredObject}; kept for embedders.
Resource = StoredObject


# What the domain layer asks of a metadata store (see IMetadataStore).


@frozen
class Label:
    """
    What an upload said of its blob, served back with it: its media type
    (C{Content-Type}) and its file name (C{Content-Disposition}).
    """

    contentType: str | None = None
    filename: str | None = None


@frozen
class Claim:
    """
    A uuid reserved for an upload in progress, with everything its row will
    hold but the blob's size and digest.  C{blobKey} records where its blob
    is being written, so that what a dead upload wrote can be found.
    C{token} is this claim's alone: completing, releasing or refreshing the
    claim must name it, so that a process whose claim was swept (it stalled
    past its lease) cannot touch the claim or object that replaced it.
    """

    kind: str
    uuid: str
    blobKey: str | None
    token: str
    text: Mapping[str, str] = field(factory=dict)
    parent: str | None = None
    label: Label = field(factory=lambda: Label())


@frozen
class NewBlob:
    """A blob committed under C{key}, for a change to point its object to."""

    key: str
    info: BlobInfo
    label: Label = field(factory=lambda: Label())


@frozen
class Change:
    """
    A change to a stored object, applied at once: a new uuid, new text
    fields, a new blob.  What is L{None} or absent stays.  C{claimed} is
    the claim (uuid, token) the change consumes in its transaction: the new
    uuid's, or one that held the new blob's key while it was written (so
    that no sweep took that blob for an orphan meanwhile).
    """

    newUUID: str | None = None
    claimed: tuple[str, str] | None = None
    text: Mapping[str, str] = field(factory=dict)
    blob: NewBlob | None = None


@frozen
class Changed:
    """A change applied: the object as it is now, and the blob it no longer uses."""

    object: StoredObject
    oldBlobKey: str | None


@frozen
class Listing:
    """
    Which ready objects of a kind a list asks for, newest first (by
    C{seq}): C{limit} of them from C{offset}, or below C{before} (a keyset
    cursor: the C{seq} of the last one seen); with C{parent}, the children
    of that uuid; with C{namePrefix}, those whose name starts with it,
    literally.
    """

    limit: int
    offset: int = 0
    before: int | None = None
    parent: str | None = None
    namePrefix: str | None = None


@frozen
class DeadClaim:
    """
    A claim nobody kept alive, taken over by the sweeping process: its
    uuid, where its blob was going, the new token that the sweep releases
    it with once that blob is removed, and the handle of the store's write
    in progress if its upload recorded one (see
    L{morpheo._interfaces.IMetadataStore.noteUpload}).
    """

    kind: str
    uuid: str
    blobKey: str | None
    token: str
    handle: str | None = None


class Concat(Enum):
    """What an upload is to tus concatenation: a whole upload, a part of
    one sent on its own (no resource of its own), or the join of parts."""

    NONE = "none"
    PARTIAL = "partial"
    FINAL = "final"


@frozen
class Upload:
    """
    A resumable upload in progress (C{/uploads/{id}}), as the database
    keeps it between requests.  C{kind} and C{uuid} name the resource it
    will be (a partial upload has neither), C{token} is the token of the
    uuid's claim, C{blobKey} the key its blob is committed under.
    C{length} is L{None} while deferred; C{state} is the blob store's own
    (L{morpheo._interfaces.IResumableBlobStore}).  C{metadata} is the
    client's C{Upload-Metadata}, decoded, given back on C{HEAD}; C{sha256}
    the digest it stated, checked at the end.  C{expires} and C{created}
    are POSIX times.  A partial upload is C{concluded} once its bytes are
    all in (committed under C{blobKey}, waiting for its final upload).
    """

    id: str
    owner: str
    blobKey: str
    state: str
    expires: float
    kind: str | None = None
    uuid: str | None = None
    token: str | None = None
    length: int | None = None
    offset: int = 0
    concat: Concat = Concat.NONE
    metadata: Mapping[str, str] = field(factory=dict)
    sha256: str | None = None
    created: float = 0.0
    concluded: bool = False
