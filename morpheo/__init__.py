"""
Morpheo Storage: blobs and their metadata for the Morpheo platform, served
over HTTP with Twisted.

The public API, for embedding the service in another Twisted application:
make a L{StorageService} from a L{StorageConfig} with C{listen=False},
start it with the host, mount its C{resource()} and serve the host's tree
with a L{StreamingSite} (see the README, "Embedding").  The parts
(L{StorageAPI}, the stores, L{BasicAuth}) are public too.
"""

# The names come from ._public, for mypy by the star import, at run time by
# __getattr__.
# ruff: noqa: F403, F405

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._public import *

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


def __getattr__(name: str) -> Any:
    """
    The public names, imported when first asked for, so that C{import
    morpheo.client} (a program outside the reactor) loads no Twisted.
    """
    if name in __all__:
        from . import _public

        return getattr(_public, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
