"""
Value types shared by the layers: what a blob is once written, what a
resource is once stored, and the errors a layer hands to the one above.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

KINDS = ("algo", "data", "model", "prediction", "problem")


@frozen
class BlobInfo:
    """What a committed blob is: its length and its sha256, hex."""

    size: int
    sha256: str


@frozen
class Resource:
    """
    One stored resource: its metadata row.  C{blob_key} is where its blob
    lives in the blob store; it is never shown to clients.
    """

    kind: str
    uuid: str
    timestamp_upload: int
    size: int
    sha256: str
    blob_key: str
    name: str | None = None
    description: str | None = None
    algo: str | None = None
    content_type: str | None = None
    filename: str | None = None
    #: The completion order: lists are newest first by it, and cursors
    #: point into it.
    seq: int = 0

    def asJSON(self) -> dict[str, Any]:
        """The contract's JSON for this kind: only the keys it defines."""
        out: dict[str, Any] = {"uuid": self.uuid, "timestamp_upload": self.timestamp_upload}
        if self.kind in ("algo", "problem"):
            out["name"] = self.name
        if self.kind == "problem":
            out["description"] = self.description
        if self.kind == "model":
            out["algo"] = self.algo
        out["size"] = self.size
        out["sha256"] = self.sha256
        return out


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
