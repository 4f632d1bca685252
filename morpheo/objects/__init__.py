"""
The domain layer: the object lifecycle (put, replace, remove, get, list,
sweep) over a metadata store and a blob store, knowing nothing of HTTP.
"""

from .._errors import TooLarge, Vanished
from ._cache import BlobCache, RecordCache
from ._lifecycle import (
    COMMIT_GRACE,
    IncomingBlob,
    NewObject,
    Objects,
    Page,
    Replacement,
    blobKey,
)
from ._resumable import (
    MAX_OPEN_UPLOADS,
    UPLOAD_EXPIRY,
    Chunk,
    NewUpload,
    Progress,
    Resumable,
)
from ._sweep import (
    CLAIM_LEASE,
    LEFTOVER_AGE,
    Sweeper,
    Swept,
    leftoverInterval,
    sweep,
    sweepLeftovers,
)

__all__ = [
    "BlobCache",
    "RecordCache",
    "CLAIM_LEASE",
    "COMMIT_GRACE",
    "LEFTOVER_AGE",
    "MAX_OPEN_UPLOADS",
    "UPLOAD_EXPIRY",
    "Chunk",
    "NewUpload",
    "Progress",
    "Resumable",
    "IncomingBlob",
    "NewObject",
    "Objects",
    "Page",
    "Replacement",
    "Swept",
    "Sweeper",
    "TooLarge",
    "Vanished",
    "blobKey",
    "leftoverInterval",
    "sweep",
    "sweepLeftovers",
]
