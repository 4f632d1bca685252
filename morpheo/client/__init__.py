# -*- test-case-name: tests.unit.test_client -*-
"""
The Morpheo Storage client: L{StorageClient} (the service's routes as
synchronous Python calls, on httpx) and the C{morpheo-storage-client}
command (L{main}).  It imports no Twisted: it runs in scripts, notebooks
and other services, outside any reactor.
"""

from ._cli import main
from ._client import StorageClient
from ._credentials import Credentials, findCredentials
from ._errors import (
    ChecksumMismatch,
    ClientError,
    Conflict,
    ExitCode,
    NotFound,
    Unauthorized,
    Unavailable,
    UsageError,
)
from ._progress import IProgress, NoProgress, TerminalProgress

__all__ = [
    "ChecksumMismatch",
    "ClientError",
    "Conflict",
    "Credentials",
    "ExitCode",
    "IProgress",
    "NoProgress",
    "NotFound",
    "StorageClient",
    "TerminalProgress",
    "Unauthorized",
    "Unavailable",
    "UsageError",
    "findCredentials",
    "main",
]
