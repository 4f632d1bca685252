# -*- test-case-name: tests.unit.test_exports -*-
"""
What C{morpheo} exports, imported on first use (see C{morpheo.__getattr__}):
the service's parts pull in Twisted, Klein and the stores' libraries, which
the client (C{morpheo.client}) and the tools do not need.
"""

# ruff: noqa: F401

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
