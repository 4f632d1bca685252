# -*- test-case-name: tests.integration.test_graceful,tests.integration.test_recovery,tests.integration.test_tap,tests.integration.test_workers -*-  # noqa: E501
"""
The service wiring: from a L{StorageConfig} to a listening site, with the
database, the migrations, the blob store and the embedded PostgreSQL started
in order and stopped in reverse (after the transfers in flight, see
L{morpheo.service._graceful}).

The same service embeds in another Twisted application: built with
C{listen=False}, it listens nowhere and its L{StorageService.resource} is
mounted by the host (see the README, "Embedding").
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import uuid
from typing import IO, Any

from attrs import define, field
from psycopg2.extensions import make_dsn
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from .._errors import BlobStoreError, DatabaseError
from .._interfaces import IBlobStore, IRedirectableBlobStore
from .._metrics import Metrics
from ..blobstores._local import LocalBlobStore
from ..metadata._embedded import EmbeddedPostgres
from ..metadata._localstore import LocalStoreRecord, OtherLocalStore, registerLocalStore
from ..metadata._migrations import (
    MigrationError,
    defaultMigrationsDir,
    loadMigrations,
    migrate,
    rollback,
)
from ..metadata._postgres import ChangeListener, Database, PostgresMetadataStore
from ..objects import BlobCache, Objects, RecordCache, Resumable, Sweeper
from ..web._accesslog import AccessLogSite
from ..web._auth import BasicAuth
from ..web._cors import CORSResource
from ..web._download import DEFAULT_TYPE
from ..web._metered import MetricsPage
from ..web._passwords import HashingPool, PasswordFileChecker
from ..web._root import StorageRoot
from ..web._routes import StorageAPI
from ..web._streaming import StreamingSite
from ..web._throttle import LoginThrottle
from ._config import StorageConfig
from ._datadir import BlobDirInUse, BlobDirLock, DataDirInUse, DataDirLock, instanceName
from ._graceful import DrainingSite, HandlerTracker, _within, trackedResource
from ._handoff import WorkerHandoff
from ._listen import Listener, ListenError, adopt, describe, makeListeners
from ._tls import TLSConfigError

#: After the shutdown deadline has cut the last transfers, how long their
#: handlers may take to clean up before the database closes.
CLEANUP_TIMEOUT = 10.0


class StartupError(Exception):
    """The service cannot start; the message says why."""


@define
class _Running:
    pool: ThreadPool
    lock: DataDirLock | None
    embedded: EmbeddedPostgres | None = None
    db: Database | None = None
    store: IBlobStore | None = None
    blobLock: BlobDirLock | None = None
    ports: list[IListeningPort] = field(factory=list)
    site: DrainingSite | None = None
    sweeper: Sweeper | None = None
    changes: ChangeListener | None = None


class _Site(AccessLogSite, DrainingSite):
    """The service's own site: streaming, access-logged, drained at stop."""


class StorageService(service.Service):
    """
    Starts everything the storage service needs, then listens; a failure
    at start-up is reported in one sentence.

    @param listen: listen on the configured endpoints (C{False} to embed:
        mount L{resource} in the host's site instead).
    @param ownsProcess: the service is the process (twistd): a start-up
        failure stops the reactor and makes the process exit with status
        1, and SIGTERM or SIGINT stops gracefully with status 0.
    @param metrics: what the service counts in, served at C{/metrics} (a
        fresh L{Metrics} by default; a worker's, with its name and the
        workers' directory, when several processes serve one port).
    @param handoff: the service is a worker of C{--workers}: its parent
        holds the data directory, started and migrated the database and
        bound the sockets it serves (L{morpheo.service._workers}).
    @param preparing: the service is the parent of C{--workers}: it takes
        the data directory, starts and migrates the database, sweeps what
        the previous run left, and serves nothing itself.
    """

    _log = Logger()

    def __init__(
        self,
        config: StorageConfig,
        reactor: Any,
        stderr: IO[str] = sys.stderr,
        *,
        listen: bool = True,
        ownsProcess: bool = False,
        metrics: Metrics | None = None,
        handoff: WorkerHandoff | None = None,
        preparing: bool = False,
    ) -> None:
        self.config = config
        self.metrics = Metrics() if metrics is None else metrics
        self._handoff = handoff
        self._preparing = preparing
        #: Once started: the database's DSN, the name the claims go by, and
        #: the blob store's name.
        self.dsn: str | None = None
        self.owner: str | None = None
        self.storeName: str | None = None
        self._reactor = reactor
        self._stderr = stderr
        self._listen = listen
        self._ownsProcess = ownsProcess
        self._running: _Running | None = None
        self._root = StorageRoot(config.corsOrigins)
        self._tracker = HandlerTracker()
        self.started: Deferred[None] = Deferred()
        self.api: StorageAPI | None = None
        #: One line per listener, as logged: C{http://127.0.0.1:8000/}, ...
        self.addresses: list[str] = []
        #: Where C{--metrics-listen} serves C{/metrics} (as L{addresses}).
        self.metricsAddress: str | None = None

    def resource(self) -> IResource:
        """
        The storage routes, with CORS, for a host application to mount (at
        its root or under a path).  Answers 503 until the service has
        started.  Serve it with L{morpheo.StreamingSite}.
        """
        return self._root

    def startService(self) -> None:
        super().startService()
        if self._ownsProcess:
            self._reactor.callWhenRunning(handleStopSignals, self._reactor)
        d = Deferred.fromCoroutine(self._start())
        d.addCallbacks(self.started.callback, self._startFailed)

    def _startFailed(self, failure: Failure) -> None:
        if failure.check(StartupError, *_EXPECTED):
            message = str(failure.value)
            detail = getattr(failure.value, "detail", None)
            if detail and detail not in message:
                # The operator's line says what the driver said.
                message = f"{message}: {detail}"
        else:
            self._log.failure("unexpected failure at start-up", failure)
            message = f"{type(failure.value).__name__}: {failure.value}"
        self._stderr.write(f"morpheo-storage: cannot start: {message}\n")
        self._stderr.flush()
        self.started.errback(failure)
        if self._ownsProcess:
            atexit.register(_exitWith, 1)
            # The failure may come before the reactor runs (a bad TLS file).
            self._reactor.callWhenRunning(self._reactor.stop)

    def _listeners(self) -> list[Listener]:
        config = self.config
        try:
            return makeListeners(
                self._reactor,
                listen=config.listen,
                host=config.host,
                port=config.port,
                cert=config.cert,
                key=config.key,
            )
        except (TLSConfigError, ListenError) as e:
            raise StartupError(str(e)) from None

    def _metricsListener(self) -> Listener | None:
        """The listener of C{--metrics-listen}, if any."""
        description = self.config.metricsListen
        if description is None:
            return None
        try:
            [listener] = makeListeners(
                self._reactor, listen=(description,), host="", port=0, cert=None, key=None
            )
        except (TLSConfigError, ListenError) as e:
            raise StartupError(str(e).replace("--listen", "--metrics-listen", 1)) from None
        return listener

    async def _start(self) -> None:
        config = self.config
        handoff = self._handoff
        if config.workers > 1 and handoff is None and not self._preparing and not config.rollback:
            raise StartupError(
                "--workers above 1 is for twistd morpheo-storage, whose process starts them;"
                " an embedded service serves in its host's process"
            )
        # TLS files and endpoint descriptions first: a typo there should not
        # wait for a database to start.
        serves = self._listen and not config.rollback and not self._preparing
        listeners = self._listeners() if serves else []
        # The workers of --workers count into one directory: the first serves
        # --metrics-listen for them all.
        metricsListener = (
            self._metricsListener() if serves and (handoff is None or handoff.index == 0) else None
        )
        # The start-up sweep takes everything unfinished under the data
        # directory for a dead predecessor's: no other process may use it.
        # A stateless node has nothing there, and is a new node at each start.
        # A worker's parent holds the directory for it.
        lock = None
        if handoff is not None:
            owner = handoff.owner
        elif config.stateless:
            owner = f"{socket.gethostname()}/{uuid.uuid4()}"
        else:
            lock = DataDirLock(config.dataDir)
            try:
                lock.acquire()
            except DataDirInUse as e:
                raise StartupError(str(e)) from None
            owner = instanceName(config.dataDir)
        self.owner = owner
        pool = ThreadPool(minthreads=0, maxthreads=config.threads, name="morpheo-io")
        pool.start()
        running = self._running = _Running(pool=pool, lock=lock)
        if handoff is not None:
            dsn = handoff.dsn
        elif config.dbHost is None:
            pgdata = os.path.join(config.dataDir, "postgres")
            self._log.info("starting the embedded PostgreSQL in {pgdata}", pgdata=pgdata)
            running.embedded = EmbeddedPostgres(pgdata, config.dbName, self._reactor, pool)
            dsn = await running.embedded.start()
            running.embedded.supervise(self._reactor)
        else:
            dsn = make_dsn(
                host=config.dbHost,
                port=config.dbPort,
                dbname=config.dbName,
                user=config.dbUser,
                password=config.dbPass,
            )
        self.dsn = dsn
        running.db = Database(
            self._reactor,
            dsn,
            size=config.dbPoolSize,
            timeout=config.dbTimeout,
            metrics=self.metrics,
        )
        await running.db.start()
        if handoff is None:
            await self._migrate(running.db)
            if config.rollback:
                return
        running.store = config.blobStore(self._reactor, pool)
        self.storeName = running.store.name
        await running.store.check()
        if isinstance(running.store, LocalBlobStore) and handoff is None:
            await self._takeLocalStore(running, running.db, running.store)
        redirectLifetime = None
        if config.redirectDownloads:
            redirectLifetime = config.downloadLifetime
            await self._checkRedirects(running.store, redirectLifetime)
        metadata = PostgresMetadataStore(running.db, owner=owner)
        # Inert until the changes are heard (below, once this process serves).
        records = RecordCache(self._reactor, metrics=self.metrics) if config.cache else None
        objects = Objects(
            metadata,
            running.store,
            reactor=self._reactor,
            pool=pool,
            maxBlobSize=config.maxBlobSize,
            claimLease=config.claimLease,
            orphanGrace=config.orphanGrace,
            records=records,
            blobCache=BlobCache(config.cache, metrics=self.metrics) if config.cache else None,
        )
        if handoff is None:
            swept = await objects.sweep(atStart=lock is not None)
        else:
            # The claims of the worker this one replaces (the parent swept
            # the rest at its start); the leftovers may be a sibling's.
            swept = await objects.sweep(atStart=True, leftovers=False)
        if self._preparing:
            # The workers keep their own connections.
            running.db.close()
            running.db = None
            if config.generatedPassword:
                self._announceGeneratedPassword()
            return
        if records is not None:
            running.changes = ChangeListener(self._reactor, dsn, records, config.dbTimeout)
            await running.changes.start()
        uploads = Resumable(
            objects,
            reactor=self._reactor,
            pool=pool,
            expiry=config.uploadExpiry,
            limit=config.maxOpenUploads,
            lease=config.claimLease,
        )
        if isinstance(running.store, LocalBlobStore):
            # A resumable write's file no upload knows of (a crash between
            # its creation and its record) is swept once surely expired.
            running.store.uploadLifetime = config.uploadExpiry + 2 * config.claimLease
        # The workers share one store: the first sweeps its leftovers.
        running.sweeper = Sweeper(
            objects,
            self._reactor,
            self.metrics,
            uploads=uploads,
            leftovers=handoff is None or handoff.index == 0,
        )
        running.sweeper.record(swept)
        running.sweeper.startService()
        self.api = StorageAPI(
            objects,
            self._auth(pool),
            redirectLifetime=redirectLifetime,
            metrics=self.metrics,
            clock=self._reactor,
            metricsHere=config.metricsListen is None,
            pool=pool,
            uploads=uploads,
        )
        routes = trackedResource(self.api.routedApp(), self._tracker)
        self._root.setInner(self.api.meter.resource(CORSResource(routes, config.corsOrigins)))
        if metricsListener is not None:
            await self._listenForMetrics(running, metricsListener, pool)
        if listeners:
            await self._listenOn(running, listeners)
        if config.generatedPassword and handoff is None:
            self._announceGeneratedPassword()
        if handoff is not None:
            handoff.ready()

    async def _migrate(self, db: Database) -> None:
        """Apply the migrations not applied yet, or with C{rollback} undo the last one and stop."""
        config = self.config
        migrations = loadMigrations(config.migrationsDir or defaultMigrationsDir())
        if config.rollback:
            undone = await rollback(db, migrations)
            self._log.info(
                "rolled back {what}",
                what=f"migration {undone.version}_{undone.name}"
                if undone
                else "nothing: no migration was applied",
            )
            self._reactor.stop()
            return
        applied = await migrate(db, migrations)
        if applied:
            self._log.info("applied migrations {applied}", applied=applied)

    async def _checkRedirects(self, store: IBlobStore, lifetime: int) -> None:
        """
        Sign a URL now, for nothing: credentials that cannot sign one stop
        the start here, rather than every download later.
        """
        try:
            await IRedirectableBlobStore(store).presignedURL(
                "morpheo-start-check", lifetime, DEFAULT_TYPE, "attachment"
            )
        except BlobStoreError as e:
            raise StartupError(f"--redirect-downloads: {e}") from None
        self._log.info(
            "downloads are redirected to the blob store, with URLs valid {lifetime} s",
            lifetime=lifetime,
        )

    def _auth(self, pool: ThreadPool) -> BasicAuth:
        """The users, their password files' hashes computed a few at a time in C{pool}."""
        config = self.config
        users = {config.user: config.password} if config.user and config.password else None
        hashing = HashingPool(self._reactor, pool)
        for checker in config.checkers:
            if isinstance(checker, PasswordFileChecker):
                checker.useHashing(hashing)
                if checker.clearTextUsers:
                    self._log.warn(
                        "the password file {path} holds clear-text passwords (users {users}):"
                        " clear text is for development; hash them with python -m morpheo.passwd",
                        path=checker.path,
                        users=", ".join(checker.clearTextUsers),
                    )
        throttle = None
        if config.loginThrottle:
            throttle = LoginThrottle(self._reactor, config.loginThrottle, metrics=self.metrics)
        return BasicAuth(
            users,
            checkers=config.checkers,
            clock=self._reactor,
            throttle=throttle,
            metrics=self.metrics,
        )

    async def _takeLocalStore(self, running: _Running, db: Database, store: LocalBlobStore) -> None:
        """
        Lock the local store's directory (for this node alone, or shared by
        the nodes that say so), then make sure the database serves this
        store: rows point to blobs by key alone, and a node with another
        directory would serve rows whose blobs it does not have.
        """
        lock = BlobDirLock(store.root, store.shared)
        try:
            await deferToThreadPool(self._reactor, running.pool, lock.acquire)
        except BlobDirInUse as e:
            raise StartupError(str(e)) from None
        running.blobLock = lock
        identity = await store.identify()
        ours = LocalStoreRecord(identity.storeId, socket.gethostname(), store.root)
        try:
            served = await registerLocalStore(db, ours)
        except OtherLocalStore as e:
            raise StartupError(str(e)) from None
        self._log.info(
            "local blob store {store}{shared}",
            store=served.describe(),
            shared=", shared with the other nodes" if store.shared else "",
        )

    async def _listenOn(self, running: _Running, listeners: list[Listener]) -> None:
        config = self.config
        handoff = self._handoff
        running.site = site = _Site(
            self._root,
            reactor=self._reactor,
            headerTimeout=config.headerTimeout or None,
            minBodyRate=config.minBodyRate,
            rateWindow=config.bodyRateWindow,
        )
        store = running.store.name if running.store is not None else "?"
        if handoff is not None:
            site.worker = handoff.index
        for i, listener in enumerate(listeners):
            try:
                if handoff is None:
                    port = await listener.endpoint.listen(site)
                else:
                    port = adopt(self._reactor, listener, handoff.listenFDs[i], site)
                    os.close(handoff.listenFDs[i])
            except Exception as e:
                raise StartupError(f"cannot listen on {listener.description}: {e}") from None
            running.ports.append(port)
            address = describe(port, listener.tls)
            self.addresses.append(address)
            if handoff is None:
                self._log.info(
                    "morpheo-storage listening on {address} (blob store: {store})",
                    address=address,
                    store=store,
                )
            else:
                self._log.info(
                    "worker {worker} (pid {pid}) serving {address}",
                    worker=handoff.index,
                    pid=os.getpid(),
                    address=address,
                )

    async def _listenForMetrics(
        self, running: _Running, listener: Listener, pool: ThreadPool
    ) -> None:
        """C{/metrics} alone, without credentials, on a listener of its own."""
        site = StreamingSite(MetricsPage(self.metrics, self._reactor, pool), reactor=self._reactor)
        site.noisy = False
        try:
            port = await listener.endpoint.listen(site)
        except Exception as e:
            raise StartupError(
                f"cannot listen for the metrics on {listener.description}: {e}"
            ) from None
        running.ports.append(port)
        address = describe(port, listener.tls)
        self.metricsAddress = address
        self._log.info("serving the metrics at {address}metrics", address=address)

    def _announceGeneratedPassword(self) -> None:
        """
        Without users, the service does not run open: the password made up
        for the run goes to a file only its owner can read, never to the log.
        """
        os.makedirs(self.config.dataDir, exist_ok=True)
        path = os.path.join(self.config.dataDir, "generated-password")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{self.config.password}\n")
        self._log.warn(
            "no --user nor --auth given: use user {user!r} with the password generated"
            " for this run, in {path}",
            user=self.config.user,
            path=path,
        )

    async def _stop(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        if running.embedded is not None:
            # A PostgreSQL that dies now stays down: the service is going.
            await running.embedded.unsupervise()
        for port in running.ports:
            try:
                await maybeDeferred(port.stopListening)
            except Exception:
                # Said, not raised: the rest of the stop must still happen.
                self._log.failure("stopping listening on {port} failed", port=port)
        timeout = self.config.shutdownTimeout
        if running.site is not None and running.site.openConnections:
            self._log.info(
                "stopped listening; waiting up to {timeout}s for {n} connection(s)",
                timeout=timeout,
                n=running.site.openConnections,
            )
            cut = await running.site.drain(self._reactor, timeout)
            if cut:
                self._log.warn(
                    "cut {n} connection(s) still busy after {timeout}s", n=cut, timeout=timeout
                )
            timeout = CLEANUP_TIMEOUT
        if self._tracker.running:
            if not await _within(self._reactor, self._tracker.whenIdle(), timeout):
                self._log.warn("{n} request handler(s) had not finished", n=self._tracker.running)
        self._root.setInner(None)
        if running.sweeper is not None:
            running.sweeper.stopService()
        if running.changes is not None:
            running.changes.close()
        if running.db is not None:
            running.db.close()
        if running.embedded is not None:
            try:
                await running.embedded.stop()
            except Exception:
                # Said, not raised: a pool left running would keep the
                # process from exiting.
                self._log.failure("stopping the embedded PostgreSQL failed")
        running.pool.stop()
        if running.blobLock is not None:
            running.blobLock.release()
        if running.lock is not None:
            running.lock.release()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


def handleStopSignals(reactor: Any) -> None:
    """
    Replace the reactor's SIGTERM and SIGINT handlers (installed at
    startup) with ones that stop without recording the signal: twistd
    would otherwise end by killing itself with it, and a supervisor (or
    a shell, after Ctrl-C) would see a graceful, requested stop as a
    death by signal.
    """
    log = StorageService._log

    def stop(name: str) -> None:
        # A second signal (an impatient supervisor, Ctrl-C pressed
        # twice) while the first stop drains changes nothing.
        try:
            reactor.stop()
        except ReactorNotRunning:
            log.info("{signal}: already stopping", signal=name)
        else:
            log.info("{signal}: stopping gracefully", signal=name)

    def onSignal(number: int, frame: Any) -> None:
        reactor.callFromThread(stop, signal.Signals(number).name)

    signal.signal(signal.SIGTERM, onSignal)
    # As the reactor: a process started with SIGINT ignored (in the
    # background of a script, say) keeps ignoring it.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, onSignal)


def _exitWith(status: int) -> None:
    """
    At interpreter exit, after twistd has cleaned up (pid file, log): end
    with C{status}.  twistd itself always exits with 0 after the reactor
    stops, which would tell a supervisor that a failed start succeeded.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


_EXPECTED = (DatabaseError, MigrationError, BlobStoreError, OSError)
