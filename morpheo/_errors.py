"""
The typed outcomes a layer hands to the one above: the failures of the
stores (the database, the blob store) and the refusals of the domain layer,
each with the sentence a client is told; the web layer turns each into its
status.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._kinds import childrenOf, plural


class APIError(Exception):
    """
    An error meant for the client: an HTTP status and a sentence a person
    can act on (and, for a refusal that time will lift, the seconds to wait
    before trying again: C{Retry-After}).  Raised anywhere below the
    routes, rendered by them.
    """

    def __init__(self, code: int, message: str, retryAfter: int | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.retryAfter = retryAfter

    def __repr__(self) -> str:
        return f"APIError({self.code}, {self.message!r})"


class BlobStoreError(Exception):
    """The blob store failed (the disk, the network, the remote service)."""


class BlobNotFound(BlobStoreError):
    """There is no blob under that key."""


class BlobMissing(BlobStoreError):
    """
    An object's row is there but the blob store has no blob under its key
    (C{key}, for the log): lost, or kept in another node's local store.
    """

    def __init__(self, kind: str, uuid: str, key: str) -> None:
        super().__init__(kind, uuid, key)
        self.kind = kind
        self.uuid = uuid
        self.key = key

    def __str__(self) -> str:
        return f"no blob {self.key} for {self.kind} {self.uuid}"


class SizeMismatch(ValueError):
    """A blob did not have the length that was announced for it."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(expected, received)
        self.expected = expected
        self.received = received

    def __str__(self) -> str:
        longer = "longer" if self.received > self.expected else "shorter"
        return f"the blob is {longer} than its announced size of {self.expected} bytes"


#: What a client is told while the metadata database cannot be reached.
DATABASE_UNAVAILABLE = "the metadata database is unavailable; try again shortly"


class DatabaseError(Exception):
    """
    The metadata database failed or cannot be reached.  Its sentence is the
    one a client is told, so it never holds what the driver said (host
    names, paths, SQL): that is C{detail}, for the log and for the one line
    an operator reads when the service cannot start.
    """

    def __init__(self, message: str = DATABASE_UNAVAILABLE, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class ClaimLost(DatabaseError):
    """
    A claim was no longer held when its upload ended: its process stalled
    for longer than the claim lease, and another node's sweep freed the
    uuid meanwhile.  Nothing was stored; the uuid may be another upload's.
    """

    def __init__(self, kind: str, uuid: str) -> None:
        super().__init__(
            f"the upload of {kind} {uuid} took longer than its claim's lease to reach the"
            " database, and its uuid was freed meanwhile: nothing was stored; send it again"
        )
        self.kind = kind
        self.uuid = uuid


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
            f"{self.kind} {self.uuid} is used by {plural(childrenOf(self.kind))}"
            f" {', '.join(self.children)}: delete them first"
        )


class DigestMismatch(Refused):
    """The blob's bytes do not match a digest its client stated (C{what})."""

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


class NoSuchUpload(Refused):
    """
    No upload of that id: never made, finished, cancelled, expired, or
    another user's (who is told nothing more).
    """

    def __init__(self, uploadId: str) -> None:
        super().__init__(uploadId)
        self.uploadId = uploadId

    def __str__(self) -> str:
        return "there is no such upload (it may have expired, been finished or cancelled)"


class UploadBusy(Refused):
    """Another request is appending to that upload right now."""

    def __str__(self) -> str:
        return "another request is appending to this upload; try again once it ends"


class TooManyUploads(Refused):
    """The user has as many unfinished uploads open as the service allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"you have {self.limit} unfinished uploads open, the most allowed:"
            " finish or cancel one first"
        )


class OffsetMismatch(Refused):
    """A request's Upload-Offset is not where the upload is."""

    def __init__(self, expected: int, provided: int) -> None:
        super().__init__(expected, provided)
        self.expected = expected
        self.provided = provided

    def __str__(self) -> str:
        return f"the upload is at offset {self.expected}, not {self.provided}: resume from there"


class ChecksumMismatch(Refused):
    """A chunk did not match its Upload-Checksum: it was dropped."""

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithm)
        self.algorithm = algorithm

    def __str__(self) -> str:
        return f"the chunk does not match its {self.algorithm} Upload-Checksum: it was not kept"


class UploadConflict(Refused):
    """A request that does not fit the upload as it is (a length given
    twice and differently, data past its end, a final upload of parts not
    finished...): C{reason} says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class UploadLost(DatabaseError):
    """
    An upload's busy lease was taken over while its request ran (this node
    stalled past the lease): what it appended is not recorded; its client
    resumes from the offset a HEAD gives.
    """

    def __init__(self) -> None:
        super().__init__(
            "this request took longer than its upload's lease to reach the database:"
            " ask the upload's offset (HEAD) and resume from there"
        )
