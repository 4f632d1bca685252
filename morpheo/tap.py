# -*- test-case-name: tests.integration.test_tap -*-
"""
The command line (C{twistd morpheo-storage ...}) and the service it builds.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Callable
from typing import TypeVar

from twisted.application import service
from twisted.cred import strcred
from twisted.cred.credentials import IUsernamePassword
from twisted.python import usage

from ._metrics import Metrics
from .objects import LEFTOVER_AGE, MAX_OPEN_UPLOADS, UPLOAD_EXPIRY
from .service._config import (
    BLOBSTORES,
    DEFAULT_BODY_RATE_WINDOW,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MIN_BODY_RATE,
    DEFAULT_REDIRECT_LIFETIME,
    ConfigError,
    StorageConfig,
    checkEndpoint,
    checkPoolSize,
    checkPort,
    checkTimeout,
)
from .service._handoff import readHandoff
from .service._jsonlog import jsonObserverFactory
from .service._listen import refuseWeakTLS
from .service._service import StorageService
from .service._workers import ParentWatch, WorkersService, parseWorkers, workerCommand
from .web._passwords import PasswordFileChecker, PasswordFileError

T = TypeVar("T")

LOG_FORMATS = ("text", "json")


def defaultDataDir() -> str:
    """Where a newcomer's blobs and embedded database go without setup."""
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "morpheo-storage")


def _size(value: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", value, re.IGNORECASE)
    if not m:
        raise usage.UsageError(f"not a size: {value!r} (e.g. 5368709120, 512M, 5G)")
    unit: int = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(m.group(1)) * unit


def _rate(value: str) -> int:
    """Bytes a second, with the suffixes of sizes."""
    try:
        return _size(value)
    except usage.UsageError:
        raise usage.UsageError(
            f"--min-body-rate must be a number of bytes a second (e.g. 1024, 4K), not {value!r}"
        ) from None


def _port(value: str) -> int:
    """Twisted's own coercion error ("invalid literal for int()") does not
    name the option."""
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"--port must be a port number, not {value!r}") from None
    return _checked(checkPort, "port", port)


def _poolSize(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise usage.UsageError(f"--db-pool-size must be a number, not {value!r}") from None
    return _checked(checkPoolSize, "db-pool-size", size)


def _dbTimeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise usage.UsageError(
            f"--db-timeout must be a positive number of seconds, not {value!r}"
        ) from None
    return _checked(checkTimeout, "db-timeout", seconds)


def _checked(check: Callable[[str, T], T], option: str, value: T) -> T:
    try:
        return check(option, value)
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None


def _endpoint(option: str) -> Callable[[str], str]:
    """The check of an object store's base URL, naming C{option}."""
    return lambda value: _checked(checkEndpoint, option, value)


def _seconds(option: str) -> Callable[[str], float]:
    """The coercion of a number of seconds, naming C{option}."""

    def coerce(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            raise usage.UsageError(f"--{option} must be a number of seconds, not {value!r}")
        return seconds

    return coerce


def _lifetime(value: str) -> int:
    """Whole seconds: a presigned URL's lifetime has no fractions."""
    if not re.fullmatch(r"[0-9]{1,9}", value.strip()):
        raise usage.UsageError(
            f"--redirect-lifetime must be a whole number of seconds, not {value!r}"
        )
    return int(value)


def _workers(value: str) -> int:
    try:
        return parseWorkers(value)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


def _count(option: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.strip().isdigit():
            raise usage.UsageError(f"--{option} must be a whole number, not {value!r}")
        return int(value)

    return parse


class Options(usage.Options, strcred.AuthOptionMixin):
    """The original service's options, with the same names and defaults
    where a default makes sense for a Python service, plus the twistd
    conventions (C{--listen}, C{--auth})."""

    supportedInterfaces = [IUsernamePassword]

    synopsis = "[options]"
    longdesc = (
        "Morpheo Storage: stores and serves algorithms, datasets, models, predictions "
        "and problems (a blob and a little metadata each) over HTTP."
    )

    optParameters = [
        ["host", None, "0.0.0.0", "The address to listen on (without --listen)."],
        ["port", None, 8000, "The port to listen on (without --listen).", _port],
        ["cert", None, None, "TLS certificate chain (PEM) to serve HTTPS with on --host/--port."],
        ["key", None, None, "TLS private key (PEM) for --cert."],
        ["user", None, None, "User name for HTTP Basic authentication."],
        [
            "password",
            None,
            None,
            "Password for HTTP Basic authentication (visible in process listings: "
            "prefer --password-file or MORPHEO_STORAGE_PASSWORD).",
        ],
        ["password-file", None, None, "Read the Basic auth password from this file."],
        [
            "db-host",
            None,
            None,
            "PostgreSQL host; without it an embedded PostgreSQL is started under --data-dir.",
        ],
        ["db-port", None, 5432, "PostgreSQL port.", int],
        ["db-name", None, "morpheo_storage", "Database name."],
        ["db-user", None, "storage", "Database user."],
        ["db-pass", None, None, "Database password (or MORPHEO_STORAGE_DB_PASS)."],
        ["db-pool-size", None, 4, "How many connections to the database to keep.", _poolSize],
        [
            "db-timeout",
            None,
            5.0,
            "Seconds a database query may take before the request gets a 503 and its"
            " connection is replaced.",
            _dbTimeout,
        ],
        [
            "db-migrations-dir",
            None,
            None,
            "Directory of the SQL migrations (default: the ones installed with the package).",
        ],
        ["blobstore", None, "local", "Where blobs go: local, s3, gc or mock."],
        [
            "data-dir",
            None,
            defaultDataDir(),
            "Directory for local blobs and the embedded database.",
        ],
        [
            "blob-dir",
            None,
            None,
            "Where the local blob store keeps its blobs (default: blobs/ under --data-dir).",
        ],
        ["s3-bucket", None, None, "S3 bucket (with --blobstore s3)."],
        ["s3-region", None, None, "S3 region (with --blobstore s3)."],
        [
            "s3-endpoint",
            None,
            None,
            "URL of an S3-compatible store (SeaweedFS, MinIO, Ceph...), addressed path-style;"
            " default: AWS S3. Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID"
            " and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials and config, instance"
            " role).",
            _endpoint("s3-endpoint"),
        ],
        ["gc-bucket", None, None, "Google Cloud Storage bucket (with --blobstore gc)."],
        [
            "gc-endpoint",
            None,
            None,
            "URL of a Google Cloud Storage emulator (e.g. fake-gcs-server), spoken to without"
            " credentials unless GOOGLE_APPLICATION_CREDENTIALS names a file; default: Google"
            " Cloud Storage, with Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,"
            " gcloud auth application-default login, or the metadata server).",
            _endpoint("gc-endpoint"),
        ],
        [
            "max-blob-size",
            None,
            None,
            "Refuse blobs larger than this with 413 (bytes, or e.g. 512M, 5G).",
            _size,
        ],
        [
            "cache",
            None,
            32 * 1024 * 1024,
            "Memory for what is read most, per process: the records of the objects read and"
            " their blobs of up to 64 KiB, so that a small GET needs neither the database nor"
            " the store.  A record changed through another node is forgotten within"
            " milliseconds (PostgreSQL's notifications) and kept 10 s at most whatever happens;"
            " 0 turns caching off (bytes, or e.g. 64M).",
            _size,
        ],
        [
            "claim-lease",
            None,
            60.0,
            "How long an upload's claim on its uuid lives without a heartbeat (seconds): a node"
            " killed or stalled mid-upload has its uuid freed, and what it wrote removed, by"
            " another node within two leases.",
            _seconds("claim-lease"),
        ],
        [
            "redirect-lifetime",
            None,
            None,
            "With --redirect-downloads, how long a download's URL stays valid (seconds;"
            f" default {DEFAULT_REDIRECT_LIFETIME}, at most 604800, 7 days).",
            _lifetime,
        ],
        [
            "login-throttle",
            None,
            10,
            "Failed logins allowed per minute from one client address, after which it is"
            " answered 429 until it has waited (0: no limit).",
            _count("login-throttle"),
        ],
        [
            "header-timeout",
            None,
            DEFAULT_HEADER_TIMEOUT,
            "Seconds a request's headers may take to arrive; a client slower than that gets"
            " 408 (0: no limit).",
            _seconds("header-timeout"),
        ],
        [
            "min-body-rate",
            None,
            DEFAULT_MIN_BODY_RATE,
            "The slowest a request body may come, in bytes a second (or e.g. 4K) over"
            " --body-rate-window; a slower one is cut with 408 (0: no minimum).",
            _rate,
        ],
        [
            "body-rate-window",
            None,
            DEFAULT_BODY_RATE_WINDOW,
            "Seconds of reading that --min-body-rate is measured over.",
            _seconds("body-rate-window"),
        ],
        [
            "workers",
            None,
            1,
            "How many processes serve the endpoints (auto: one per core); they share one"
            " database, started once.",
            _workers,
        ],
        ["log-format", None, "text", "Log lines as text or json (one JSON object per line)."],
        [
            "metrics-listen",
            None,
            None,
            "Serve the Prometheus metrics at /metrics on this Twisted endpoint description"
            " (e.g. tcp:9100:interface=127.0.0.1), without credentials; without it /metrics"
            " is on the service's own listeners, behind its credentials.",
        ],
        [
            "shutdown-timeout",
            None,
            30.0,
            "On SIGTERM or SIGINT, how long transfers in flight may take to finish (seconds).",
            _seconds("shutdown-timeout"),
        ],
        [
            "orphan-grace",
            None,
            LEFTOVER_AGE,
            "How old (seconds) a blob no object points to, or an unfinished write, must be"
            " before the sweep removes it; the sweep runs every half of it (1 s to 30 min).",
            _seconds("orphan-grace"),
        ],
        [
            "upload-expiry",
            None,
            UPLOAD_EXPIRY,
            "How long (seconds) an unfinished resumable upload (/uploads) lives after its last"
            " request; the sweep then removes what it wrote and frees its uuid.",
            _seconds("upload-expiry"),
        ],
        [
            "max-open-uploads",
            None,
            MAX_OPEN_UPLOADS,
            "How many unfinished resumable uploads one user may have open at once.",
            _count("max-open-uploads"),
        ],
    ]
    optFlags = [
        ["db-rollback", None, "Roll back the last schema migration and exit."],
        [
            "redirect-downloads",
            None,
            "Answer a blob's GET with a redirect (307) to a short-lived presigned URL of the"
            " blob store (s3 or gc), so that the bytes skip this service.",
        ],
        [
            "shared-blob-dir",
            None,
            "Every node on this database mounts --blob-dir (NFS...) and serves its blobs.",
        ],
    ]

    compData = usage.Completions(
        optActions={
            "cert": usage.CompleteFiles("*.pem"),
            "key": usage.CompleteFiles("*.pem"),
            "password-file": usage.CompleteFiles(),
            "data-dir": usage.CompleteDirs(),
            "blob-dir": usage.CompleteDirs(),
            "db-migrations-dir": usage.CompleteDirs(),
            "blobstore": usage.CompleteList(BLOBSTORES),
            "log-format": usage.CompleteList(LOG_FORMATS),
        }
    )

    def __init__(self) -> None:
        super().__init__()
        # The help of an opt_ method is its docstring as written, line
        # breaks and indentation included: make each one line of words.
        self.docs = {name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()}
        # The help's defaults only (the values stay floats): 30, not 30.0.
        self.defaults = {
            name: int(value) if isinstance(value, float) and value.is_integer() else value
            for name, value in self.defaults.items()
        }
        self["listen"] = []
        self["cors-origin"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept for the workers of --workers: they are given the same ones.
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint description (repeatable), e.g.
        tcp:8000:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem,
        unix:/run/morpheo.sock; replaces --host/--port.
        """
        reason = refuseWeakTLS(description)
        if reason:
            raise usage.UsageError(reason)
        self["listen"].append(description)

    def opt_cors_origin(self, origin: str) -> None:
        """
        An origin allowed to call the service from a browser (repeatable),
        e.g. https://app.example.org; default: any (*).
        """
        self["cors-origin"].append(origin)

    def opt_auth(self, description: str) -> None:
        """
        A source of users (repeatable): file:PATH for a file of user:password
        lines, the passwords in clear or hashed (python -m morpheo.passwd
        USER); any other twisted.cred checker (--help-auth lists them).
        """
        kind, _, argument = description.partition(":")
        if kind != "file":
            super().opt_auth(description)
            return
        try:
            self.addChecker(PasswordFileChecker(argument))
        except PasswordFileError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be text or json, not {self['log-format']!r}")
        if self["log-format"] == "json":
            self._logAsJSON()
        if self["password-file"]:
            try:
                with open(self["password-file"], encoding="utf-8") as f:
                    self["password"] = f.read().rstrip("\r\n")
            except OSError as e:
                raise usage.UsageError(f"cannot read --password-file: {e.strerror}") from e
        self["password"] = self["password"] or os.environ.get("MORPHEO_STORAGE_PASSWORD")
        self["db-pass"] = self["db-pass"] or os.environ.get("MORPHEO_STORAGE_DB_PASS")
        # Every other check is the configuration's own, as for an embedder.
        try:
            self._config = self._makeConfig()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _logAsJSON(self) -> None:
        """
        Make twistd log JSON lines: the plugin's options are parsed before
        twistd picks its log observer, and twistd's C{--logger} is the place
        for an observer factory.  An explicit C{--logger} or C{--syslog}
        wins.
        """
        parent = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger") and not parent.get("syslog"):
            parent["logger"] = jsonObserverFactory(parent)

    def config(self) -> StorageConfig:
        """The configuration these options make (once parsed)."""
        return self._config

    def _makeConfig(self) -> StorageConfig:
        checkers = tuple(self.get("credCheckers", ()))
        generated = not self["user"] and not checkers and not self["password"]
        return StorageConfig(
            host=self["host"],
            port=self["port"],
            listen=tuple(self["listen"]),
            cert=self["cert"],
            key=self["key"],
            checkers=checkers,
            corsOrigins=tuple(self["cors-origin"]) or ("*",),
            shutdownTimeout=self["shutdown-timeout"],
            user=self["user"] or ("morpheo" if generated else None),
            password=self["password"] or (secrets.token_urlsafe(18) if generated else None),
            generatedPassword=generated,
            dbHost=self["db-host"],
            dbPort=self["db-port"],
            dbName=self["db-name"],
            dbUser=self["db-user"],
            dbPass=self["db-pass"],
            dbPoolSize=self["db-pool-size"],
            dbTimeout=self["db-timeout"],
            migrationsDir=self["db-migrations-dir"],
            rollback=bool(self["db-rollback"]),
            blobstore=self["blobstore"],
            dataDir=os.path.abspath(self["data-dir"]),
            blobDir=os.path.abspath(self["blob-dir"]) if self["blob-dir"] else None,
            sharedBlobDir=bool(self["shared-blob-dir"]),
            s3Bucket=self["s3-bucket"],
            s3Region=self["s3-region"],
            s3Endpoint=self["s3-endpoint"],
            gcBucket=self["gc-bucket"],
            gcEndpoint=self["gc-endpoint"],
            maxBlobSize=self["max-blob-size"],
            cache=self["cache"],
            claimLease=self["claim-lease"],
            redirectDownloads=bool(self["redirect-downloads"]),
            redirectLifetime=self["redirect-lifetime"],
            orphanGrace=self["orphan-grace"],
            uploadExpiry=self["upload-expiry"],
            maxOpenUploads=self["max-open-uploads"],
            loginThrottle=self["login-throttle"],
            headerTimeout=self["header-timeout"],
            minBodyRate=self["min-body-rate"],
            bodyRateWindow=self["body-rate-window"],
            metricsListen=self["metrics-listen"],
            workers=self["workers"],
        )


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config = options.config()
    handoff = readHandoff()
    if handoff is not None:
        # A worker of --workers: its parent passes the signals on to it,
        # not the terminal's Ctrl-C to the whole group.
        os.setpgrp()
        both = service.MultiService()
        metrics = Metrics(worker=str(handoff.index), multiprocessDir=handoff.metricsDirectory)
        StorageService(
            handoff.configure(config),
            reactor,
            stderr=sys.stderr,
            ownsProcess=True,
            handoff=handoff,
            metrics=metrics,
        ).setServiceParent(both)
        ParentWatch(reactor, handoff.parentPid).setServiceParent(both)
        return both
    if config.workers > 1 and not config.rollback:
        command = workerCommand(options.arguments, getattr(options, "parent", None), sys.executable)
        return WorkersService(config, reactor, command, stderr=sys.stderr)
    return StorageService(config, reactor, stderr=sys.stderr, ownsProcess=True)


__all__ = ["Options", "makeService"]
