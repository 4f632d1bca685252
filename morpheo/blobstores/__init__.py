"""
The blob stores: where blob bytes live.  All provide L{IBlobStore}, and say
with C{remote} whether their failures are a backend's (S3, GCS) or ours
(the local disk, memory).

The stores are C{_local}, C{_memory}, C{_s3} and C{_gcs}.  Their writers
share one skeleton (C{_writer}), flow control (C{_flow}) and a hasher
(C{_hasher}); the local one works in a thread (C{_threaded}), the remote
ones stream segments of requests (C{_segmented}, C{_bodies}, C{_cleanup}).
Reads go out through the producers of C{_producer} and C{_download}; the
remote stores' HTTP is in C{_http} and C{_httpstore}.
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
