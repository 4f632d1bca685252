"""
Morpheo Storage: blobs and their metadata for the Morpheo platform, served
over HTTP with Twisted.

The public API, for embedding the service in another Twisted application:
make a L{StorageService} from a L{StorageConfig} with C{listen=False},
start it with the host, mount its C{resource()} and serve the host's tree
with a L{StreamingSite} (see the README, "Embedding").  The parts
(L{StorageAPI}, the stores, L{BasicAuth}) are public too.
"""

from ._accesslog import AccessLogSite
from ._app import StorageAPI
from ._auth import BasicAuth
from ._cors import CORSResource
from ._interfaces import IBlobStore, IBlobWriter
from ._metadata import Database, DatabaseError, MetadataStore
from ._passwords import PasswordFileChecker, hashPassword
from ._service import StorageConfig, StorageService
from ._streaming import BodyAborted, IStreamingRequest, RequestBody, StreamingSite
from ._tls import loadCertificateOptions
from ._types import KINDS, APIError, BlobInfo, BlobNotFound, BlobStoreError, Resource
from .blobstores import LocalBlobStore

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "APIError",
    "AccessLogSite",
    "BasicAuth",
    "BlobInfo",
    "BlobNotFound",
    "BlobStoreError",
    "BodyAborted",
    "CORSResource",
    "Database",
    "DatabaseError",
    "IBlobStore",
    "IBlobWriter",
    "IStreamingRequest",
    "LocalBlobStore",
    "MetadataStore",
    "PasswordFileChecker",
    "RequestBody",
    "Resource",
    "StorageAPI",
    "StorageConfig",
    "StorageService",
    "StreamingSite",
    "__version__",
    "hashPassword",
    "loadCertificateOptions",
]
