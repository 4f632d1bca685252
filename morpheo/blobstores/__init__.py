"""
The blob stores: where blob bytes live.  All provide L{IBlobStore}; the
service's configuration builds the one it names
(L{morpheo.service.StorageConfig.blobStore}).
"""

from .._interfaces import IBlobStore
from ._local import LocalBlobStore
from ._memory import MemoryBlobStore

__all__ = ["IBlobStore", "LocalBlobStore", "MemoryBlobStore"]
