# -*- test-case-name: tests.test_service -*-
"""
The service wiring: from a L{StorageConfig} to a listening site, with the
database, the migrations, the blob store and the embedded PostgreSQL started
in order and stopped in reverse.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from attrs import define, field, frozen
from psycopg2.extensions import make_dsn
from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ._app import StorageAPI
from ._auth import BasicAuth
from ._embedded import EmbeddedPostgres
from ._interfaces import IBlobStore
from ._metadata import Database, MetadataStore
from ._migrations import defaultMigrationsDir, loadMigrations, migrate, rollback
from ._streaming import StreamingSite
from .blobstores import makeBlobStore


@frozen
class StorageConfig:
    """Everything the service needs to know, whatever it was read from."""

    user: str
    password: str = field(repr=False)
    host: str = "0.0.0.0"
    port: int = 8000
    generatedPassword: bool = False
    dbHost: str | None = None
    dbPort: int = 5432
    dbName: str = "morpheo_storage"
    dbUser: str = "storage"
    dbPass: str | None = field(default=None, repr=False)
    migrationsDir: str | None = None
    rollback: bool = False
    blobstore: str = "local"
    dataDir: str = "morpheo-data"
    s3Bucket: str | None = None
    s3Region: str | None = None
    gcBucket: str | None = None
    maxBlobSize: int | None = None
    threads: int = 8


class StartupError(Exception):
    """The service cannot start; the message says why."""


@define
class _Running:
    pool: ThreadPool
    embedded: EmbeddedPostgres | None = None
    db: Database | None = None
    store: IBlobStore | None = None
    port: IListeningPort | None = None


class StorageService(service.Service):
    """
    Starts everything the storage service needs, then listens; a failure
    at start-up is reported in one sentence and stops the process.
    """

    _log = Logger()

    def __init__(self, config: StorageConfig, reactor: Any, stderr: IO[str] = sys.stderr) -> None:
        self.config = config
        self._reactor = reactor
        self._stderr = stderr
        self._running: _Running | None = None
        self.started: Deferred[None] = Deferred()
        self.api: StorageAPI | None = None

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        d.addCallbacks(self.started.callback, self._startFailed)

    def _startFailed(self, failure: Failure) -> None:
        if failure.check(StartupError, *_EXPECTED):
            message = str(failure.value)
        else:
            self._log.failure("unexpected failure at start-up", failure)
            message = f"{type(failure.value).__name__}: {failure.value}"
        self._stderr.write(f"morpheo-storage: cannot start: {message}\n")
        self._stderr.flush()
        self.started.errback(failure)
        self._reactor.stop()

    async def _start(self) -> None:
        config = self.config
        pool = ThreadPool(minthreads=0, maxthreads=config.threads, name="morpheo-io")
        pool.start()
        running = self._running = _Running(pool=pool)
        if config.dbHost is None:
            pgdata = os.path.join(config.dataDir, "postgres")
            self._log.info("starting the embedded PostgreSQL in {pgdata}", pgdata=pgdata)
            running.embedded = EmbeddedPostgres(pgdata, config.dbName, self._reactor, pool)
            dsn = await running.embedded.start()
        else:
            dsn = make_dsn(
                host=config.dbHost,
                port=config.dbPort,
                dbname=config.dbName,
                user=config.dbUser,
                password=config.dbPass,
            )
        running.db = Database(self._reactor, dsn)
        await running.db.start()
        migrations = loadMigrations(config.migrationsDir or defaultMigrationsDir())
        if config.rollback:
            undone = await rollback(running.db, migrations)
            self._log.info(
                "rolled back {what}",
                what=f"migration {undone.version}_{undone.name}" if undone else "nothing: no migration was applied",
            )
            self._reactor.stop()
            return
        applied = await migrate(running.db, migrations)
        if applied:
            self._log.info("applied migrations {applied}", applied=applied)
        running.store = makeBlobStore(config, self._reactor, pool)
        await running.store.check()
        sweep = getattr(running.store, "sweepTemporary", None)
        if sweep is not None:
            removed = await sweep()
            if removed:
                self._log.info("removed {n} temporary files left by an earlier run", n=len(removed))
        self.api = StorageAPI(
            metadata=MetadataStore(running.db),
            store=running.store,
            auth=BasicAuth({config.user: config.password}),
            maxBlobSize=config.maxBlobSize,
        )
        site = StreamingSite(self.api.resource())
        endpoint = TCP4ServerEndpoint(self._reactor, config.port, interface=config.host)
        running.port = await endpoint.listen(site)
        address = running.port.getHost()
        self._log.info(
            "morpheo-storage listening on http://{host}:{port}/ (blob store: {store})",
            host=address.host,  # type: ignore[attr-defined]
            port=address.port,  # type: ignore[attr-defined]
            store=running.store.name,
        )
        if config.generatedPassword:
            self._log.warn(
                "no --user given: use user {user!r} with password {password!r} (generated for this run)",
                user=config.user,
                password=config.password,
            )

    async def _stop(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        if running.port is not None:
            await running.port.stopListening()
        if running.db is not None:
            running.db.close()
        if running.embedded is not None:
            await running.embedded.stop()
        running.pool.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


def _expected() -> tuple[type[BaseException], ...]:
    from ._metadata import DatabaseError
    from ._migrations import MigrationError
    from ._types import BlobStoreError

    return (DatabaseError, MigrationError, BlobStoreError, OSError)


_EXPECTED = _expected()
