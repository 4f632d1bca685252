"""
The public API for embedding stays: every name of C{morpheo.__all__} is
importable from C{morpheo}, and the list is the one documented.
"""

from __future__ import annotations

import morpheo

PUBLIC = {
    "KINDS", "APIError", "AccessLogSite", "BasicAuth", "BlobInfo", "BlobNotFound",
    "BlobStoreError", "BodyAborted", "CORSResource", "Database", "DatabaseError", "IBlobStore",
    "IBlobWriter", "IStreamingRequest", "LocalBlobStore", "MetadataStore",
    "PasswordFileChecker", "RequestBody", "Resource", "StorageAPI", "StorageConfig",
    "StorageService", "StreamingSite", "__version__", "hashPassword", "loadCertificateOptions",
    # The layers' parts, since the domain layer and the metadata interface.
    "ConfigError", "IMetadataStore", "MemoryBlobStore", "Objects", "PostgresMetadataStore",
    "StoredObject",
    # Stores that serve downloads themselves (redirects).
    "IRedirectableBlobStore",
    # A body the streaming layer cut (malformed, too slow).
    "BodyRefused",
    # What a service counts in (a registry of the host's, a worker's name).
    "Metrics",
}  # fmt: skip


def test_public_names() -> None:
    assert set(morpheo.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(morpheo, name) is not None


def test_public_classes_live_in_private_modules() -> None:
    """Re-exported from one-concern modules; the package itself defines nothing."""
    for name in PUBLIC - {"KINDS", "__version__"}:
        module = getattr(morpheo, name).__module__
        assert module.split(".")[-1].startswith("_"), name
