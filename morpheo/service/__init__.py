"""
The service wiring: the configuration, the service that starts the
database, the blob store and the listeners in order and stops them in
reverse (after a graceful drain), TLS and endpoints, the data directory's
lock, and JSON log lines.
"""

from ._config import ConfigError, StorageConfig
from ._service import StartupError, StorageService
from ._tls import loadCertificateOptions

__all__ = [
    "ConfigError",
    "StartupError",
    "StorageConfig",
    "StorageService",
    "loadCertificateOptions",
]
