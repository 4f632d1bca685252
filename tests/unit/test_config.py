"""
L{StorageConfig} checks itself when it is made: an embedder gets the
refusals of the command line, in its words, and the blob store it names.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from morpheo import ConfigError, IBlobStore, LocalBlobStore, MemoryBlobStore, StorageConfig

USERS: dict[str, Any] = {"user": "alice", "password": "secret"}


def refusal(**settings: Any) -> str:
    """The sentence a config made with C{settings} is refused with."""
    with pytest.raises(ConfigError) as excinfo:
        StorageConfig(**{**USERS, **settings})
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"blobstore": "floppy"}, "--blobstore must be one of local, s3, gc, mock"),
        ({"blobstore": "s3", "s3Bucket": "b"}, "--blobstore s3 needs --s3-bucket and --s3-region"),
        ({"blobstore": "gc"}, "--blobstore gc needs --gc-bucket"),
        ({"s3Endpoint": "ftp://host"}, "--s3-endpoint must be an http:// or https:// URL"),
        ({"gcEndpoint": "localhost:4443"}, "--gc-endpoint must be an http:// or https:// URL"),
        ({"dbName": "x; DROP TABLE resource"}, "is not a plain identifier"),
        ({"port": 70000}, "--port must be between 0 and 65535"),
        ({"dbPort": -1}, "--db-port must be between 0 and 65535"),
        ({"shutdownTimeout": -1.0}, "--shutdown-timeout must be a number of seconds"),
        ({"maxBlobSize": -5}, "--max-blob-size must not be negative"),
        ({"orphanGrace": -1.0}, "--orphan-grace must be a number of seconds"),
        ({"orphanGrace": float("nan")}, "--orphan-grace must be a number of seconds"),
        ({"orphanGrace": float("inf")}, "--orphan-grace must be a number of seconds"),
        ({"orphanGrace": "3600"}, "--orphan-grace must be a number of seconds"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"uploadExpiry": 0.0}, "--upload-expiry must be a positive number of seconds"),
        ({"uploadExpiry": math.inf}, "--upload-expiry must be a positive number of seconds"),
        ({"maxOpenUploads": 0}, "--max-open-uploads must be at least 1, not 0"),
        ({"dbPoolSize": 0}, "--db-pool-size must be at least 1, not 0"),
        ({"dbTimeout": 0.0}, "--db-timeout must be a positive number of seconds"),
        ({"dbTimeout": float("nan")}, "--db-timeout must be a positive number of seconds"),
        ({"loginThrottle": -1}, "--login-throttle must be a number of failed logins per minute"),
        ({"headerTimeout": -1.0}, "--header-timeout must be a number of seconds (0: none)"),
        ({"minBodyRate": -1}, "--min-body-rate must be a number of bytes a second (0: none)"),
        ({"bodyRateWindow": 0.0}, "--body-rate-window must be a number of seconds above 0"),
        ({"headerTimeout": math.inf}, "--header-timeout must be a number of seconds (0: none)"),
        ({"bodyRateWindow": math.nan}, "--body-rate-window must be a number of seconds above 0"),
        ({"listen": ("tcp:8000",), "cert": "c.pem", "key": "k.pem"}, "with --listen"),
        (
            {"blobstore": "gc", "gcBucket": "g", "blobDir": "/srv/blobs"},
            "--blob-dir and --shared-blob-dir go with --blobstore local",
        ),
        (
            {"blobstore": "mock", "sharedBlobDir": True},
            "--blob-dir and --shared-blob-dir go with --blobstore local",
        ),
        ({"sharedBlobDir": True, "dbHost": "db"}, "--shared-blob-dir needs --blob-dir"),
        ({"sharedBlobDir": True, "blobDir": "/srv/blobs"}, "--shared-blob-dir needs --db-host"),
    ],
)
def test_settingsThatCannotWorkAreRefusedNamingTheOption(
    settings: dict[str, Any], words: str
) -> None:
    assert words in refusal(**settings)


def test_aCertificateNeedsItsKey() -> None:
    assert "--cert and --key go together" in refusal(cert="cert.pem")
    assert "--cert and --key go together" in refusal(key="key.pem")


def test_unreadableTLSFilesAreRefused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing.pem")
    assert f"cannot read the TLS certificate --cert {missing}" in refusal(cert=missing, key=missing)


def test_usersNeedPasswordsAndAServiceNeedsUsers() -> None:
    with pytest.raises(ConfigError, match="--user needs a password"):
        StorageConfig(user="alice")
    with pytest.raises(ConfigError, match="a password needs --user"):
        StorageConfig(password="secret")
    with pytest.raises(ConfigError, match="no users"):
        StorageConfig()


@pytest.mark.parametrize(("name", "cls"), [("local", LocalBlobStore), ("mock", MemoryBlobStore)])
def test_theConfigBuildsTheBlobStoreItNames(name: str, cls: type, tmp_path: Path) -> None:
    pool = ThreadPool(minthreads=0, maxthreads=1)
    store = StorageConfig(**USERS, blobstore=name, dataDir=str(tmp_path)).blobStore(Clock(), pool)
    assert isinstance(store, cls)
    assert verifyObject(IBlobStore, store)


S3: dict[str, Any] = {"blobstore": "s3", "s3Bucket": "b", "s3Region": "eu-west-3"}
GC: dict[str, Any] = {"blobstore": "gc", "gcBucket": "g"}


@pytest.mark.parametrize("store", ["local", "mock"])
def test_redirectsNeedAStoreThatServesDownloads(store: str) -> None:
    """The local disk and memory have no URL of their own to send a client to."""
    words = refusal(blobstore=store, redirectDownloads=True)
    assert words == (
        "--redirect-downloads needs a store that serves downloads itself, --blobstore s3 or gc;"
        f" {store} blobs are served by this service only"
    )


@pytest.mark.parametrize("store", [S3, GC])
def test_redirectsLastFiveMinutesUnlessTold(store: dict[str, Any]) -> None:
    config = StorageConfig(**USERS, **store, redirectDownloads=True)
    assert (config.redirectDownloads, config.downloadLifetime) == (True, 300)
    told = StorageConfig(**USERS, **store, redirectDownloads=True, redirectLifetime=604800)
    assert told.downloadLifetime == 604800


@pytest.mark.parametrize("store", [S3, GC])
@pytest.mark.parametrize("lifetime", [0, -5, 604801])
def test_aLifetimeBeyondTheStoresIsRefused(store: dict[str, Any], lifetime: int) -> None:
    words = refusal(**store, redirectDownloads=True, redirectLifetime=lifetime)
    assert words == (
        "--redirect-lifetime must be 1 to 604800 seconds (the most the store allows),"
        f" not {lifetime}"
    )


def test_aLifetimeWithoutRedirectsIsRefused() -> None:
    words = refusal(**S3, redirectLifetime=60)
    assert words == "--redirect-lifetime goes with --redirect-downloads"


def test_theLocalStoreKeepsItsBlobsUnderTheDataDirUnlessTold(tmp_path: Path) -> None:
    pool = ThreadPool(minthreads=0, maxthreads=1)
    default = StorageConfig(**USERS, dataDir=str(tmp_path)).blobStore(Clock(), pool)
    assert isinstance(default, LocalBlobStore)
    assert (default.root, default.shared) == (str(tmp_path / "blobs"), False)
    shared = StorageConfig(
        **USERS, dataDir=str(tmp_path), blobDir="/srv/blobs", sharedBlobDir=True, dbHost="db"
    ).blobStore(Clock(), pool)
    assert isinstance(shared, LocalBlobStore)
    assert (shared.root, shared.shared) == ("/srv/blobs", True)
