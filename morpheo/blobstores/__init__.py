"""
The blob stores: where blob bytes live.  All provide L{IBlobStore}, and say
with C{remote} whether their failures are a backend's (S3, GCS) or ours
(the local disk, memory).

The stores are C{_local}, C{_memory}, C{_s3} and C{_gcs}.  Their writers
share one skeleton (C{_writer}), flow control and the memory budget that
all of a store's transfers share (C{_flow}), and a hasher
(C{_hasher}); the local one works in a thread (C{_threaded}), the remote
ones stream segments of requests (C{_segmented}, C{_bodies}, C{_cleanup}).
Reads go out through the producers of C{_producer} and C{_download}; the
remote stores' HTTP is in C{_http} and C{_httpstore}.  Their resumable
writes share an appender (C{_resumable}), S3's and GCS's own parts next
to their stores (C{_s3resumable}, C{_gcsresumable}).
The service's configuration builds the one it names
(L{morpheo.service.StorageConfig.blobStore}).
"""

from .._interfaces import IBlobStore
from ._flow import MemoryBudget
from ._local import LocalBlobStore
from ._memory import MemoryBlobStore

__all__ = ["IBlobStore", "LocalBlobStore", "MemoryBlobStore", "MemoryBudget"]
