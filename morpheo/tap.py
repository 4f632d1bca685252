# -*- test-case-name: tests.test_tap -*-
"""
The command line (C{twistd morpheo-storage ...}) and the service it builds.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

from ._service import StorageConfig, StorageService

BLOBSTORES = ("local", "s3", "gc", "mock")


def defaultDataDir() -> str:
    """Where a newcomer's blobs and embedded database go without setup."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "morpheo-storage")


def _size(value: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", value, re.IGNORECASE)
    if not m:
        raise usage.UsageError(f"not a size: {value!r} (e.g. 5368709120, 512M, 5G)")
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")


class Options(usage.Options):
    """The original service's options, with the same names and defaults
    where a default makes sense for a Python service."""

    synopsis = "[options]"
    longdesc = (
        "Morpheo Storage: stores and serves algorithms, datasets, models, predictions "
        "and problems (a blob and a little metadata each) over HTTP."
    )

    optParameters = [
        ["host", None, "0.0.0.0", "The address to listen on."],
        ["port", None, 8000, "The port to listen on.", int],
        ["cert", None, None, "TLS certificate chain (PEM) to serve HTTPS with."],
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
        ["db-host", None, None, "PostgreSQL host; without it an embedded PostgreSQL is started under --data-dir."],
        ["db-port", None, 5432, "PostgreSQL port.", int],
        ["db-name", None, "morpheo_storage", "Database name."],
        ["db-user", None, "storage", "Database user."],
        ["db-pass", None, None, "Database password (or MORPHEO_STORAGE_DB_PASS)."],
        ["db-migrations-dir", None, None, "Directory of the SQL migrations (default: the ones installed with the package)."],
        ["blobstore", None, "local", "Where blobs go: local, s3, gc or mock."],
        ["data-dir", None, defaultDataDir(), "Directory for local blobs and the embedded database."],
        ["s3-bucket", None, None, "S3 bucket (with --blobstore s3)."],
        ["s3-region", None, None, "S3 region (with --blobstore s3)."],
        ["gc-bucket", None, None, "Google Cloud Storage bucket (with --blobstore gc)."],
        ["max-blob-size", None, None, "Refuse blobs larger than this with 413 (bytes, or e.g. 512M, 5G).", _size],
    ]
    optFlags = [
        ["db-rollback", None, "Roll back the last schema migration and exit."],
    ]

    compData = usage.Completions(
        optActions={
            "cert": usage.CompleteFiles("*.pem"),
            "key": usage.CompleteFiles("*.pem"),
            "password-file": usage.CompleteFiles(),
            "data-dir": usage.CompleteDirs(),
            "db-migrations-dir": usage.CompleteDirs(),
            "blobstore": usage.CompleteList(BLOBSTORES),
        }
    )

    def postOptions(self) -> None:
        if self["blobstore"] not in BLOBSTORES:
            raise usage.UsageError(
                f"--blobstore must be one of {', '.join(BLOBSTORES)}, not {self['blobstore']!r}"
            )
        if bool(self["cert"]) != bool(self["key"]):
            raise usage.UsageError("--cert and --key go together")
        if self["cert"]:
            raise usage.UsageError("TLS (--cert/--key) is not available yet in this version")
        if self["blobstore"] == "s3" and not (self["s3-bucket"] and self["s3-region"]):
            raise usage.UsageError("--blobstore s3 needs --s3-bucket and --s3-region")
        if self["blobstore"] == "gc" and not self["gc-bucket"]:
            raise usage.UsageError("--blobstore gc needs --gc-bucket")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", self["db-name"]):
            raise usage.UsageError(f"--db-name {self['db-name']!r} is not a plain identifier")
        if self["password-file"]:
            try:
                with open(self["password-file"], encoding="utf-8") as f:
                    self["password"] = f.read().rstrip("\r\n")
            except OSError as e:
                raise usage.UsageError(f"cannot read --password-file: {e.strerror}") from e
        self["password"] = self["password"] or os.environ.get("MORPHEO_STORAGE_PASSWORD")
        self["db-pass"] = self["db-pass"] or os.environ.get("MORPHEO_STORAGE_DB_PASS")
        if self["password"] and not self["user"]:
            raise usage.UsageError("a password needs --user")
        if self["user"] and not self["password"]:
            raise usage.UsageError(
                "--user needs a password: --password-file, MORPHEO_STORAGE_PASSWORD or --password"
            )

    def config(self) -> StorageConfig:
        generated = not self["user"]
        return StorageConfig(
            host=self["host"],
            port=self["port"],
            user=self["user"] or "morpheo",
            password=self["password"] or secrets.token_urlsafe(18),
            generatedPassword=generated,
            dbHost=self["db-host"],
            dbPort=self["db-port"],
            dbName=self["db-name"],
            dbUser=self["db-user"],
            dbPass=self["db-pass"],
            migrationsDir=self["db-migrations-dir"],
            rollback=bool(self["db-rollback"]),
            blobstore=self["blobstore"],
            dataDir=os.path.abspath(self["data-dir"]),
            s3Bucket=self["s3-bucket"],
            s3Region=self["s3-region"],
            gcBucket=self["gc-bucket"],
            maxBlobSize=self["max-blob-size"],
        )


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return StorageService(options.config(), reactor, stderr=sys.stderr)


__all__ = ["Options", "makeService"]


