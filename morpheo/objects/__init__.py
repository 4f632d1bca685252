"""
The domain layer: the object lifecycle (put, replace, remove, get, list,
sweep) over a metadata store and a blob store, knowing nothing of HTTP.
"""

from .._errors import TooLarge, Vanished
from ._lifecycle import (
    IncomingBlob,
    NewObject,
    Objects,
    Page,
    Replacement,
    blobKey,
)
from ._sweep import (
    LEFTOVER_AGE,
    STALE_CLAIM,
    SWEEP_INTERVAL,
    Sweeper,
    Swept,
    leftoverInterval,
    sweep,
    sweepLeftovers,
)

__all__ = [
    "LEFTOVER_AGE",
    "STALE_CLAIM",
    "SWEEP_INTERVAL",
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
