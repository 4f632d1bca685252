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

    from ..service._service import StorageConfig


def makeBlobStore(config: StorageConfig, reactor: Any, pool: ThreadPool) -> IBlobStore:
    """
    The store C{config.blobstore} names.  Nothing here blocks: the remote
    stores look their credentials up (files, environment, metadata
    endpoints) in C{pool} on their first request, which for the service is
    the C{check()} at start-up, so missing credentials stop it there.
    """
    if config.blobstore == "local":
        return LocalBlobStore(os.path.join(config.dataDir, "blobs"), reactor, pool)
    if config.blobstore == "mock":
        from ._memory import MemoryBlobStore

        return MemoryBlobStore(reactor)
    if config.blobstore == "s3":
        from ._s3 import S3BlobStore

        assert config.s3Bucket and config.s3Region, "the options require them"
        return S3BlobStore(
            config.s3Bucket, config.s3Region, reactor, pool, endpoint=config.s3Endpoint
        )
    if config.blobstore == "gc":
        from ._gcs import GCSBlobStore

        assert config.gcBucket, "the options require it"
        return GCSBlobStore(config.gcBucket, reactor, pool, endpoint=config.gcEndpoint)
    raise ValueError(f"unknown blob store {config.blobstore!r}")


__all__ = ["IBlobStore", "LocalBlobStore", "makeBlobStore"]
