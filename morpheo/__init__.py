"""
Morpheo Storage: blobs and their metadata for the Morpheo platform, served
over HTTP with Twisted.

The public API, for embedding the service in another Twisted application:
build a L{StorageAPI} from a metadata store and a blob store and serve its
C{resource()} with a L{StreamingSite} (see the README).
"""

from ._app import StorageAPI
from ._auth import BasicAuth
from ._interfaces import IBlobStore, IBlobWriter
from ._metadata import Database, DatabaseError, MetadataStore
from ._service import StorageConfig, StorageService
from ._streaming import BodyAborted, IStreamingRequest, RequestBody, StreamingSite
from ._types import KINDS, APIError, BlobInfo, BlobNotFound, BlobStoreError, Resource
from .blobstores import LocalBlobStore

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "APIError",
    "BasicAuth",
    "BlobInfo",
    "BlobNotFound",
    "BlobStoreError",
    "BodyAborted",
    "Database",
    "DatabaseError",
    "IBlobStore",
    "IBlobWriter",
    "IStreamingRequest",
    "LocalBlobStore",
    "MetadataStore",
    "RequestBody",
    "Resource",
    "StorageAPI",
    "StorageConfig",
    "StorageService",
    "StreamingSite",
    "__version__",
]
