"""
Value types shared by the layers: what a blob is once written, what an
object is once stored, and what the domain layer asks of a metadata store
(the typed outcomes are in L{morpheo._errors}).
"""

from __future__ import annotations

from collections.abc import Mapping
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
