"""
Morpheo Storage: blobs and their metadata for the Morpheo platform, served
over HTTP with Twisted.

The public API, for embedding the service in another Twisted application:
make a L{StorageService} from a L{StorageConfig} with C{listen=False},
start it with the host, mount its C{resource()} and serve the host's tree
with a L{StreamingSite} (see the README, "Embedding").  The parts
(L{StorageAPI}, the stores, L{BasicAuth}) are public too.
"""

from ._errors import APIError, BlobNotFound, BlobStoreError, DatabaseError
from ._interfaces import IBlobStore, IBlobWriter, IMetadataStore, IRedirectableBlobStore
from ._kinds import KINDS
from ._metrics import Metrics
from ._types import BlobInfo, Resource, StoredObject
from .blobstores import LocalBlobStore, MemoryBlobStore
from .metadata._postgres import Database, MetadataStore, PostgresMetadataStore
from .objects import Objects
from .service._config import ConfigError, StorageConfig
from .service._service import StorageService
from .service._tls import loadCertificateOptions
from .web._accesslog import AccessLogSite
from .web._auth import BasicAuth
from .web._cors import CORSResource
from .web._passwords import PasswordFileChecker, hashPassword
from .web._routes import StorageAPI
from .web._streaming import (
    BodyAborted,
    BodyRefused,
    IStreamingRequest,
    RequestBody,
    StreamingSite,
)

__version__ = "0.1.0"

__all__ = [
    "StoredObject",
    "PostgresMetadataStore",
    "Objects",
    "MemoryBlobStore",
    "IMetadataStore",
    "ConfigError",
    "KINDS",
    "APIError",
    "AccessLogSite",
    "BasicAuth",
    "BlobInfo",
    "BlobNotFound",
    "BlobStoreError",
    "BodyAborted",
    "BodyRefused",
    "CORSResource",
    "Database",
    "DatabaseError",
    "IBlobStore",
    "IBlobWriter",
    "IRedirectableBlobStore",
    "IStreamingRequest",
    "LocalBlobStore",
    "MetadataStore",
    "Metrics",
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
