# -*- test-case-name: tests.unit.test_config,tests.integration.test_tap -*-
"""
What the service is told, whatever it was read from: the command line
(L{morpheo.tap.Options}) or a host application that embeds the service.
L{StorageConfig} checks itself when it is made, so an embedder gets the
same refusals, in the same words, as the command line, and nothing
unchecked reaches the SQL or a blob store; it also builds the blob store it
names.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.python.threadpool import ThreadPool

from .._interfaces import IBlobStore
from ..objects import LEFTOVER_AGE, MAX_OPEN_UPLOADS, UPLOAD_EXPIRY
from ._listen import refuseWeakTLS

BLOBSTORES = ("local", "s3", "gc", "mock")
#: The stores that can serve a download themselves (--redirect-downloads).
REDIRECTING = ("s3", "gc")
#: Seconds a redirected download's URL stays valid, unless told otherwise.
DEFAULT_REDIRECT_LIFETIME = 300
#: Slow clients: seconds a request's headers may take, the slowest a body
#: may come (bytes a second) and the window that rate is measured over.
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_MIN_BODY_RATE = 1024
DEFAULT_BODY_RATE_WINDOW = 60.0
#: The most processes C{--workers} may start.
MAX_WORKERS = 256


class ConfigError(ValueError):
    """A setting is wrong; the message names the option and says why."""


def checkEndpoint(option: str, value: str) -> str:
    """An object store's base URL (scheme and host, maybe a path), checked
    now: a typo should not wait for a failed request."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(
            f"--{option} must be an http:// or https:// URL, e.g. http://127.0.0.1:8333,"
            f" not {value!r}"
        )
    return value.rstrip("/")


def checkPort(option: str, port: int) -> int:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--{option} must be between 0 and 65535, not {port}")
    return port


def checkPoolSize(option: str, size: int) -> int:
    if not size >= 1:
        raise ConfigError(f"--{option} must be at least 1, not {size}")
    return size


def checkTimeout(option: str, seconds: float) -> float:
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"--{option} must be a positive number of seconds, not {seconds!r}")
    return seconds


@frozen
class StorageConfig:
    """
    Everything the service needs to know.

    Users: C{user} with C{password}, and/or twisted.cred C{checkers} (for
    L{IUsernamePassword}); at least one of them.  Listening: the endpoint
    descriptions of C{listen}, or else C{host}/C{port} (TLS with C{cert}
    and C{key}).  Downloads: C{redirectDownloads} answers a blob's GET
    with a redirect to a URL of the store's, valid C{redirectLifetime}
    seconds (L{DEFAULT_REDIRECT_LIFETIME} if None).  C{orphanGrace}: how
    old, in seconds, a blob nothing points to (or an unfinished write) must
    be before the sweep removes it.  Slow clients: a request's headers must
    arrive within C{headerTimeout} seconds, a body at C{minBodyRate} bytes a
    second or more over C{bodyRateWindow} seconds (0 turns either off).

    @raise ConfigError: when made with settings that cannot work.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str = "0.0.0.0"
    port: int = 8000
    listen: tuple[str, ...] = ()
    cert: str | None = None
    key: str | None = None
    checkers: tuple[ICredentialsChecker, ...] = field(default=(), repr=False)
    corsOrigins: tuple[str, ...] = ("*",)
    shutdownTimeout: float = 30.0
    generatedPassword: bool = False
    dbHost: str | None = None
    dbPort: int = 5432
    dbName: str = "morpheo_storage"
    dbUser: str = "storage"
    dbPass: str | None = field(default=None, repr=False)
    dbPoolSize: int = 4
    dbTimeout: float = 5.0
    migrationsDir: str | None = None
    rollback: bool = False
    blobstore: str = "local"
    dataDir: str = "morpheo-data"
    blobDir: str | None = None
    sharedBlobDir: bool = False
    s3Bucket: str | None = None
    s3Region: str | None = None
    s3Endpoint: str | None = None
    gcBucket: str | None = None
    gcEndpoint: str | None = None
    maxBlobSize: int | None = None
    #: Bytes of memory for the records and small blobs read most (0: none).
    cache: int = 32 * 1024 * 1024
    claimLease: float = 60.0
    redirectDownloads: bool = False
    redirectLifetime: int | None = None
    orphanGrace: float = LEFTOVER_AGE
    #: How long an unfinished resumable upload lives after its last request.
    uploadExpiry: float = UPLOAD_EXPIRY
    #: How many unfinished resumable uploads one user may have open.
    maxOpenUploads: int = MAX_OPEN_UPLOADS
    #: Failed logins allowed per minute from one client address (0: no limit).
    loginThrottle: int = 10
    threads: int = 8
    headerTimeout: float = DEFAULT_HEADER_TIMEOUT
    minBodyRate: int = DEFAULT_MIN_BODY_RATE
    bodyRateWindow: float = DEFAULT_BODY_RATE_WINDOW
    #: A Twisted endpoint description to serve C{/metrics} on, without
    #: credentials (L{None}: on the main listeners, behind them).
    metricsListen: str | None = None
    #: How many processes serve the endpoints (C{--workers}); above 1, a
    #: parent process starts them (L{morpheo.service._workers}).
    workers: int = 1
    #: In a worker process, its index (0 to C{workers} - 1), the same for
    #: its replacements; None in a process that serves alone.
    worker: int | None = None
    #: In a worker process, a scratch directory the parent made empty for
    #: this run (C{run/} under the data directory, or a temporary one for a
    #: stateless node) and removes at its end, shared by every worker (for
    #: metrics that add up several processes' counts); None in a process
    #: that serves alone.
    metricsDirectory: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.blobstore not in BLOBSTORES:
            raise ConfigError(
                f"--blobstore must be one of {', '.join(BLOBSTORES)}, not {self.blobstore!r}"
            )
        if bool(self.cert) != bool(self.key):
            raise ConfigError("--cert and --key go together")
        if self.cert and self.listen:
            raise ConfigError(
                "--cert/--key go with --host/--port; with --listen, give the files in the"
                " description: ssl:PORT:privateKey=KEY:certKey=CERT"
            )
        for option, path, what in (("cert", self.cert, "certificate"), ("key", self.key, "key")):
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read the TLS {what} --{option} {path}")
        checkPort("port", self.port)
        checkPort("db-port", self.dbPort)
        checkPoolSize("db-pool-size", self.dbPoolSize)
        checkTimeout("db-timeout", self.dbTimeout)
        if self.blobstore == "s3" and not (self.s3Bucket and self.s3Region):
            raise ConfigError("--blobstore s3 needs --s3-bucket and --s3-region")
        if self.blobstore == "gc" and not self.gcBucket:
            raise ConfigError("--blobstore gc needs --gc-bucket")
        if self.blobstore != "local" and (self.blobDir or self.sharedBlobDir):
            raise ConfigError("--blob-dir and --shared-blob-dir go with --blobstore local")
        if self.sharedBlobDir and not self.blobDir:
            raise ConfigError("--shared-blob-dir needs --blob-dir: the directory every node mounts")
        if self.sharedBlobDir and not self.dbHost:
            raise ConfigError(
                "--shared-blob-dir needs --db-host: the nodes sharing their blobs share"
                " their database too"
            )
        for option, url in (("s3-endpoint", self.s3Endpoint), ("gc-endpoint", self.gcEndpoint)):
            if url is not None:
                checkEndpoint(option, url)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", self.dbName):
            raise ConfigError(f"--db-name {self.dbName!r} is not a plain identifier")
        if self.password and not self.user:
            raise ConfigError("a password needs --user")
        if self.user and not self.password:
            raise ConfigError(
                "--user needs a password: --password-file, MORPHEO_STORAGE_PASSWORD or --password"
            )
        if not self.user and not self.checkers:
            raise ConfigError("no users: give --user and its password, or --auth")
        if not self.shutdownTimeout >= 0:
            raise ConfigError(
                f"--shutdown-timeout must be a number of seconds, not {self.shutdownTimeout!r}"
            )
        if self.maxBlobSize is not None and self.maxBlobSize < 0:
            raise ConfigError(f"--max-blob-size must not be negative, not {self.maxBlobSize}")
        if not self.claimLease >= 1:
            raise ConfigError(f"--claim-lease must be at least 1 second, not {self.claimLease!r}")
        if not (isinstance(self.orphanGrace, int | float) and 0 <= self.orphanGrace < math.inf):
            raise ConfigError(
                f"--orphan-grace must be a number of seconds, not {self.orphanGrace!r}"
            )
        if not (isinstance(self.uploadExpiry, int | float) and 0 < self.uploadExpiry < math.inf):
            raise ConfigError(
                f"--upload-expiry must be a positive number of seconds, not {self.uploadExpiry!r}"
            )
        if self.maxOpenUploads < 1:
            raise ConfigError(f"--max-open-uploads must be at least 1, not {self.maxOpenUploads}")
        if self.loginThrottle < 0:
            raise ConfigError(
                f"--login-throttle must be a number of failed logins per minute (0: no limit),"
                f" not {self.loginThrottle}"
            )
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, not {self.threads}")
        if not (isinstance(self.headerTimeout, int | float) and 0 <= self.headerTimeout < math.inf):
            raise ConfigError(
                "--header-timeout must be a number of seconds (0: none),"
                f" not {self.headerTimeout!r}"
            )
        if self.minBodyRate < 0:
            raise ConfigError(
                f"--min-body-rate must be a number of bytes a second (0: none),"
                f" not {self.minBodyRate}"
            )
        if not (
            isinstance(self.bodyRateWindow, int | float) and 0 < self.bodyRateWindow < math.inf
        ):
            raise ConfigError(
                f"--body-rate-window must be a number of seconds above 0,"
                f" not {self.bodyRateWindow!r}"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be 1 to {MAX_WORKERS}, not {self.workers}")
        if self.worker is not None and not 0 <= self.worker < self.workers:
            raise ConfigError(f"worker {self.worker} is not one of the {self.workers} workers")
        self._checkRedirects()
        self._checkMetricsListen()

    def _checkMetricsListen(self) -> None:
        description = self.metricsListen
        if description is None:
            return
        if ":" not in description or not description.split(":", 1)[0].strip():
            raise ConfigError(
                "--metrics-listen must be a Twisted endpoint description, e.g."
                f" tcp:9100:interface=127.0.0.1, not {description!r}"
            )
        weak = refuseWeakTLS(description)
        if weak:
            raise ConfigError(weak.replace("--listen", "--metrics-listen", 1))
        if description in self.listen:
            raise ConfigError(
                f"--metrics-listen {description!r} is also a --listen: give it an endpoint"
                " of its own"
            )

    def _checkRedirects(self) -> None:
        if self.redirectLifetime is not None and not self.redirectDownloads:
            raise ConfigError("--redirect-lifetime goes with --redirect-downloads")
        if not self.redirectDownloads:
            return
        if self.blobstore not in REDIRECTING:
            raise ConfigError(
                "--redirect-downloads needs a store that serves downloads itself,"
                f" --blobstore s3 or gc; {self.blobstore} blobs are served by this service only"
            )
        longest = _longestRedirect(self.blobstore)
        if not 1 <= self.downloadLifetime <= longest:
            raise ConfigError(
                f"--redirect-lifetime must be 1 to {longest} seconds (the most the store"
                f" allows), not {self.downloadLifetime}"
            )

    @property
    def downloadLifetime(self) -> int:
        """Seconds a redirected download's URL stays valid."""
        if self.redirectLifetime is None:
            return DEFAULT_REDIRECT_LIFETIME
        return self.redirectLifetime

    @property
    def stateless(self) -> bool:
        """
        Whether the node keeps nothing of its own on disk: its database and
        its blobs are elsewhere, so it needs no persistent data directory
        and is a new node at each start (a fresh container is a fresh node).
        """
        return self.dbHost is not None and self.blobstore in ("s3", "gc", "mock")

    def blobStore(self, reactor: Any, pool: ThreadPool) -> IBlobStore:
        """
        The store C{blobstore} names.  Nothing here blocks: the remote
        stores look their credentials up (files, environment, metadata
        endpoints) in C{pool} on their first request, which for the service
        is the C{check()} at start-up, so missing credentials stop it there.
        """
        if self.blobstore == "mock":
            from ..blobstores._memory import MemoryBlobStore

            return MemoryBlobStore(reactor)
        if self.blobstore == "s3":
            from ..blobstores._s3 import S3BlobStore

            assert self.s3Bucket and self.s3Region, "checked when made"
            return S3BlobStore(
                self.s3Bucket, self.s3Region, reactor, pool, endpoint=self.s3Endpoint
            )
        if self.blobstore == "gc":
            from ..blobstores._gcs import GCSBlobStore

            assert self.gcBucket, "checked when made"
            return GCSBlobStore(self.gcBucket, reactor, pool, endpoint=self.gcEndpoint)
        from ..blobstores._local import LocalBlobStore

        return LocalBlobStore(self.localBlobDir, reactor, pool, shared=self.sharedBlobDir)

    @property
    def localBlobDir(self) -> str:
        """Where the local store keeps its blobs: C{blobDir}, else under C{dataDir}."""
        return self.blobDir or os.path.join(self.dataDir, "blobs")


def _longestRedirect(blobstore: str) -> int:
    """The longest lifetime the store gives its URLs, as its class says
    (imported only now: botocore takes time to import)."""
    if blobstore == "s3":
        from ..blobstores._s3 import S3BlobStore

        return S3BlobStore.maxRedirectLifetime
    from ..blobstores._gcs import GCSBlobStore

    return GCSBlobStore.maxRedirectLifetime
