"""
Value types shared by the layers: what a blob is once written, what an
object is once stored, and the typed outcomes a layer hands to the one
above (the web layer turns each into its status and sentence).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import field, frozen

from ._kinds import TABLE, childrenOf


@frozen
class BlobInfo:
    """What a committed blob is: its length and its sha256, hex."""

    size: int
    sha256: str


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


class APIError(Exception):
    """
    An error meant for the client: an HTTP status and a sentence a person
    can act on.  Raised anywhere below the routes, rendered by them.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"APIError({self.code}, {self.message!r})"


class BlobStoreError(Exception):
    """The blob store failed (the disk, the network, the remote service)."""


class BlobNotFound(BlobStoreError):
    """There is no blob under that key."""


class SizeMismatch(ValueError):
    """A blob did not have the length that was announced for it."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(expected, received)
        self.expected = expected
        self.received = received

    def __str__(self) -> str:
        longer = "longer" if self.received > self.expected else "shorter"
        return f"the blob is {longer} than its announced size of {self.expected} bytes"


class DatabaseError(Exception):
    """The metadata database failed or cannot be reached."""


class ClaimLost(DatabaseError):
    """A claim was no longer there to complete (swept as dead meanwhile)."""

    def __init__(self, kind: str, uuid: str) -> None:
        super().__init__(f"the claim on {kind} {uuid} was lost before the upload ended")
        self.kind = kind
        self.uuid = uuid


def _plural(kinds: Iterable[str]) -> str:
    return " and ".join(f"{k}s" for k in kinds)


class Refused(Exception):
    """
    An outcome the request itself caused (an unknown uuid, a taken one...):
    the web layer answers it with a 4xx and this sentence, which says what
    to fix.
    """


class _ObjectRefused(Refused):
    """A refusal about one object, of C{kind} and C{uuid}."""

    def __init__(self, kind: str, uuid: str) -> None:
        super().__init__(kind, uuid)
        self.kind = kind
        self.uuid = uuid


class NoSuchObject(_ObjectRefused):
    """There is no (ready) object of that kind and uuid."""

    def __str__(self) -> str:
        return f"there is no {self.kind} {self.uuid}"


class Vanished(NoSuchObject):
    """The object a change was made for was deleted or renamed meanwhile."""

    def __str__(self) -> str:
        return f"{self.kind} {self.uuid} was deleted or renamed during this change"


class NoSuchParent(_ObjectRefused):
    """The object an upload names as its parent (a model's algo) does not exist."""

    def __str__(self) -> str:
        children = " or ".join(childrenOf(self.kind))
        return f"there is no {self.kind} {self.uuid} to attach this {children} to"


class Taken(_ObjectRefused):
    """The uuid is already taken, or being uploaded right now."""

    def __str__(self) -> str:
        return f"{self.kind} {self.uuid} already exists (or is being uploaded)"


class InUse(_ObjectRefused):
    """An object still has children (an algo that models use): kept."""

    def __init__(self, kind: str, uuid: str, children: Sequence[str]) -> None:
        super().__init__(kind, uuid)
        self.children = tuple(children)

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.uuid} is used by {_plural(childrenOf(self.kind))}"
            f" {', '.join(self.children)}: delete them first"
        )


class DigestMismatch(Refused):
    """The blob's bytes do not match a digest its client stated."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:
        return f"the blob does not match its stated {self.what}: nothing was stored"


class TooLarge(Refused):
    """A blob (or a body that holds one) larger than the service takes."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return f"the blob is larger than the maximum of {self.limit} bytes"


# What the domain layer asks of a metadata store (see IMetadataStore).


@frozen
class Claim:
    """
    A uuid reserved for an upload in progress, with everything its row will
    hold but the blob's size and digest.  C{blobKey} records where its blob
    is being written, so that what a dead upload wrote can be found.
    """

    kind: str
    uuid: str
    blobKey: str | None
    text: Mapping[str, str] = field(factory=dict)
    parent: str | None = None
    contentType: str | None = None
    filename: str | None = None


@frozen
class NewBlob:
    """A blob committed under C{key}, for a change to point its object to."""

    key: str
    info: BlobInfo
    contentType: str | None = None
    filename: str | None = None


@frozen
class Change:
    """
    A change to a stored object, applied at once: a new uuid (claimed
    first), new text fields, a new blob.  What is L{None} or absent stays.
    """

    newUUID: str | None = None
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
    """A claim nobody keeps alive: its uuid, and where its blob was going."""

    kind: str
    uuid: str
    blobKey: str | None
