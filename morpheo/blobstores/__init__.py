"""
The blob stores: where blob bytes live.  All provide L{IBlobStore}.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._interfaces import IBlobStore
from ._local import LocalBlobStore

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

    from .._service import StorageConfig


def makeBlobStore(config: StorageConfig, reactor: Any, pool: ThreadPool) -> IBlobStore:
    """The store C{config.blobstore} names."""
    if config.blobstore == "local":
        return LocalBlobStore(os.path.join(config.dataDir, "blobs"), reactor, pool)
    if config.blobstore == "mock":
        from ._mock import MockBlobStore

        return MockBlobStore()  # type: ignore[no-any-return]
    raise NotImplementedError(
        f"the {config.blobstore!r} blob store is not available yet in this version"
    )


__all__ = ["IBlobStore", "LocalBlobStore", "makeBlobStore"]
