# -*- test-case-name: tests.integration.test_metadata_contract,tests.integration.test_migrations,tests.integration.test_db_outages -*-  # noqa: E501
"""
Object metadata in PostgreSQL, through a pool of txpostgres connections:
L{PostgresMetadataStore}, on L{Database}, a small typed face for the
untyped driver that also outlives the database's outages (broken
connections replaced, every call bounded in time).
"""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import psycopg2
from attrs import astuple
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    FirstError,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Cooperator, LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres
from zope.interface import implementer

from .._errors import (
    ClaimLost,
    DatabaseError,
    InUse,
    NoSuchObject,
    NoSuchParent,
    NoSuchUpload,
    Taken,
    TooManyUploads,
    UploadBusy,
    UploadLost,
)
from .._interfaces import IChangeObserver, IMetadataStore, IUploadMetadataStore
from .._kinds import PARENTS, TABLE, TEXT_FIELDS, childrenOf
from .._metrics import Metrics
from .._types import (
    BlobInfo,
    Change,
    Changed,
    Claim,
    Concat,
    DeadClaim,
    Listing,
    StoredObject,
    Upload,
)

T = TypeVar("T")


_COLUMNS = ", ".join(
    (
        "kind, uuid::text, timestamp_upload, size, sha256, blob_key",
        *TEXT_FIELDS,
        *(f"{p}::text" for p in PARENTS),
        "content_type, filename, seq",
    )
)


def _stored(row: Sequence[Any]) -> StoredObject:
    kind, uuid, ts, size, sha, key = row[:6]
    text = dict(zip(TEXT_FIELDS, row[6 : 6 + len(TEXT_FIELDS)], strict=True))
    rest = row[6 + len(TEXT_FIELDS) :]
    parents = dict(zip(PARENTS, rest[: len(PARENTS)], strict=True))
    ctype, filename, seq = rest[len(PARENTS) :]
    parentKind = TABLE[kind].parent
    return StoredObject(
        kind=kind,
        uuid=uuid,
        timestamp_upload=ts,
        size=size,
        sha256=sha,
        blob_key=key,
        text={name: text[name] for name in TABLE[kind].text},
        parent=parents[parentKind] if parentKind is not None else None,
        content_type=ctype,
        filename=filename,
        seq=seq,
    )


_UPLOAD_COLUMNS = (
    "id, owner, blob_key, store_state, EXTRACT(EPOCH FROM expires)::float8, kind, uuid::text,"
    ' claim_token, length, "offset", concat, metadata::text, sha256,'
    " EXTRACT(EPOCH FROM created)::float8, concluded"
)


def _upload(row: Sequence[Any]) -> Upload:
    (
        uid,
        owner,
        key,
        state,
        expires,
        kind,
        uuid,
        token,
        length,
        offset,
        concat,
        meta,
        sha,
        created,
        concluded,
    ) = row
    return Upload(
        id=uid,
        owner=owner,
        blobKey=key,
        state=state,
        expires=expires,
        kind=kind,
        uuid=uuid,
        token=token,
        length=length,
        offset=offset,
        concat=Concat(concat),
        metadata=json.loads(meta),
        sha256=sha,
        created=created,
        concluded=concluded,
    )


def _textColumn(name: str) -> str:
    """A text field's column; only the kinds' fields ever reach the SQL."""
    if name not in TEXT_FIELDS:
        raise ValueError(f"no text field {name!r}")
    return name


def _likePrefix(prefix: str) -> str:
    """A LIKE pattern matching what starts with C{prefix}, literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


#: How long a query (or an attempt to connect) may take by default, in seconds.
DEFAULT_TIMEOUT = 5.0
#: How many connections the pool keeps by default.
DEFAULT_POOL_SIZE = 4
#: How long a call may wait for a connection that broke just now to be
#: back (a terminated session is replaced in milliseconds), in seconds.
RECONNECT_GRACE = 0.25


def _oneLine(error: object) -> str:
    """psycopg2's messages span lines; the log says one."""
    return " ".join(str(error).split()) or type(error).__name__


class _NoAnswer(Exception):
    """An attempt to connect got no answer in time."""


#: The failures that mean the database (or the way to it) failed, rather
#: than what a transaction decided (L{Taken}, L{NoSuchObject}...).
_DRIVER_ERRORS = (
    psycopg2.Error,
    txpostgres.AlreadyPolling,
    txpostgres.RollbackFailed,
    reconnection.ConnectionDead,
    ConnectionDone,
    ConnectionLost,
    _NoAnswer,
    OSError,
)


class _Link(txpostgres.Connection):
    """
    One connection of the pool, which its L{_Detector} (txpostgres's own
    reconnection) reopens when it breaks.  Connecting is bounded in time
    (libpq ignores C{connect_timeout} on asynchronous connections); a link
    that breaks while idle is handed to its detector, where txpostgres
    would let the reactor log a traceback for it.
    """

    def __init__(
        self,
        reactor: Any,
        detector: _Detector,
        timeout: float,
        cooperator: Cooperator | None = None,
    ) -> None:
        super().__init__(reactor, cooperator=cooperator, detector=detector)
        self.timeout = timeout
        #: Why the link was dropped on purpose (a query that got no answer).
        self.droppedBecause: str | None = None
        #: When it was lost, while it is being reconnected.
        self.lostAt: float | None = None
        self._waiters: list[Deferred[None]] = []

    def broken(self) -> bool:
        """The link is closed: by the server, the network, or L{drop}."""
        connection = self.pollable()
        return connection is None or bool(connection.closed)

    def connect(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = super().connect(*args, **kwargs)
        if d.called:
            return d
        timedOut = False

        def giveUp() -> None:
            nonlocal timedOut
            timedOut = True
            self.close()

        timer = self.reactor.callLater(self.timeout, giveUp)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if timedOut:
                return Failure(_NoAnswer(f"no answer within {self.timeout:g}s"))
            return result

        return d.addBoth(done)

    def reconnected(self, within: float) -> Deferred[None]:
        """Fires once the link is back, or after C{within} seconds."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)

        def enough() -> None:
            if not d.called:
                d.callback(None)

        timer = self.reactor.callLater(within, enough)

        def forget(result: object) -> object:
            if d in self._waiters:
                self._waiters.remove(d)
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(forget)
        return d

    def back(self) -> None:
        """The link is open again: wake who waits for it."""
        self.lostAt = self.droppedBecause = None
        for d in list(self._waiters):
            if not d.called:
                d.callback(None)

    def drop(self, why: str) -> None:
        """
        Close the link at once, whatever it is doing: what is in flight on
        it fails, and the detector opens it again.
        """
        self.droppedBecause = why
        if self.pollable() is not None:
            self.close()

    def doRead(self) -> None:
        try:
            super().doRead()
        except Exception:
            # The server closed the idle link (a restart, a terminated
            # backend): what the reactor would do, without a traceback.
            self.connectionLost(Failure())

    def doWrite(self) -> None:
        try:
            super().doWrite()
        except Exception:
            # The same for a link being opened that nobody waits for any
            # more ("the database system is shutting down" once its connect
            # was given up).
            self.connectionLost(Failure())

    def runInteraction(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run C{interaction(cursor, *args)} in a transaction, as txpostgres
        does, except that a transaction whose link broke is not rolled
        back: the server has, and a rollback there could only fail (and
        fill the log with tracebacks).
        """
        d: Deferred[Any] = self.lock.run(
            self.detector.callChecking,
            lambda: Deferred.fromCoroutine(self._transaction(interaction, args)),
        )
        return d

    async def _transaction(self, interaction: Callable[..., Any], args: Sequence[Any]) -> Any:
        cursor = self.cursor()
        await cursor.execute("BEGIN")
        try:
            result = await maybeDeferred(interaction, cursor, *args)
        except BaseException as e:
            if not self.broken():
                try:
                    await cursor.execute("ROLLBACK")
                except Exception:
                    raise txpostgres.RollbackFailed(self, Failure(e)) from e
            raise
        await cursor.execute("COMMIT")
        return result


class _LinkKeeper(Protocol):
    """What a L{_Detector} tells of its link: a L{Database}, a L{ChangeListener}."""

    def _lost(self, link: _Link, failure: Failure) -> None: ...

    def _unreachable(self, failure: Failure) -> None: ...

    def _recovered(self, link: _Link) -> None: ...


class _Detector(reconnection.DeadConnectionDetector):
    """
    txpostgres's reconnection for one L{_Link}: a link is dead once closed
    (whatever closed it) or once a rollback failed on it; it is reopened at
    once, then every second at most, until L{stop}.  Its losses and returns
    are told to its keeper, which logs them.
    """

    def __init__(self, reactor: Any, database: _LinkKeeper) -> None:
        super().__init__(
            deathChecker=self._dead, reconnectionIterator=self._delays, reactor=reactor
        )
        self._database = database
        self.stopped = False
        self.addRecoveryHandler(self._recovered)

    def _dead(self, failure: Failure) -> bool:
        link = self.reconnectable
        return bool(failure.check(txpostgres.RollbackFailed)) or (
            link is not None and link.broken()
        )

    @staticmethod
    def _delays() -> Iterator[float]:
        yield from (0.0, 0.2, 0.5)
        while True:
            yield 1.0

    def startReconnecting(self, f: Failure) -> None:
        # txpostgres's own, with failed attempts told (not logged as
        # tracebacks) and an end once stopped.
        if self.stopped:
            return
        self._database._lost(self.reconnectable, f)
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        d = call.start(self._delays(), self._retry)
        d.addCallback(lambda _: self.connectionRecovered())
        d.addErrback(lambda _: None)

    def _retry(self, f: Failure) -> Failure | None:
        if self.stopped:
            return f
        self._database._unreachable(f)
        return None

    def _recovered(self) -> None:
        self._database._recovered(self.reconnectable)

    def stop(self) -> None:
        self.stopped = True


class Database:
    """
    A small typed face for a pool of txpostgres connections, which turns
    driver errors into L{DatabaseError} so the web layer can say the
    database failed.

    A connection that breaks is replaced (txpostgres's
    C{DeadConnectionDetector}): while it is away, what would use it fails at
    once, and every connection the pool has is tried first.  Every call is
    bounded by C{timeout} seconds, waiting for a connection included: past
    it, the call fails and the connection it was on is dropped and replaced
    (a frozen link answers nothing, ever).  What the driver said goes to the
    log, once per failure; the errors say only which part failed.

    @param reactor: provides C{IReactorTime} and C{IReactorFDSet}.
    @param metrics: where the pool's use and its errors are counted (a
        fresh L{Metrics} by default).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        dsn: str,
        size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = Metrics() if metrics is None else metrics
        self._reactor = reactor
        self._dsn = dsn
        self._size = size
        self.timeout = timeout
        self._links: list[_Link] = []
        self._idle: list[_Link] = []
        self._free: DeferredSemaphore | None = None
        #: The links being reconnected, and since when one is.
        self._away: set[_Link] = set()
        self._awaySince = 0.0
        self._unreachableLogged = False

    async def start(self) -> None:
        self._links = [
            _Link(self._reactor, _Detector(self._reactor, self), self.timeout)
            for _ in range(self._size)
        ]
        try:
            await gatherResults(
                [link.connect(self._dsn) for link in self._links], consumeErrors=True
            )
        except FirstError as e:
            self.close()
            reason = e.subFailure.value
            raise DatabaseError(
                f"cannot connect to PostgreSQL: {_oneLine(reason)}", detail=_oneLine(reason)
            ) from reason
        self._idle = list(self._links)
        self._free = DeferredSemaphore(self._size)
        self.metrics.dbPoolSize.set(self._size)

    def close(self) -> None:
        links, self._links, self._idle, self._free = self._links, [], [], None
        if links:
            self.metrics.dbPoolSize.set(0)
            self.metrics.dbBroken.set(0)
        for link in links:
            link.detector.stop()
            link.drop("the service is stopping")

    # What the links' detectors tell

    def _lost(self, link: _Link, failure: Failure) -> None:
        link.lostAt = self._reactor.seconds()
        if not self._away:
            self._awaySince = self._reactor.seconds()
            self._unreachableLogged = False
            self._log.warn(
                "lost a connection to the metadata database ({why}); reconnecting",
                why=link.droppedBecause or _oneLine(failure.value),
            )
        self._away.add(link)
        self.metrics.dbBroken.set(len(self._away))

    def _unreachable(self, failure: Failure) -> None:
        if not self._unreachableLogged:
            self._unreachableLogged = True
            self._log.warn(
                "cannot reach the metadata database ({why}); trying again every second",
                why=_oneLine(failure.value),
            )

    def _recovered(self, link: _Link) -> None:
        link.back()
        if link not in self._links:  # closed meanwhile
            link.drop("the service is stopping")
            return
        self._away.discard(link)
        self.metrics.dbBroken.set(len(self._away))
        if not self._away:
            self._log.info(
                "reconnected to the metadata database after {seconds:.1f}s",
                seconds=self._reactor.seconds() - self._awaySince,
            )

    # Calls

    def _checkout(self) -> _Link:
        """An idle link, a live one if there is any."""
        if not self._idle:
            raise DatabaseError(detail="the pool was closed")
        live = [k for k in self._idle if not k.detector.connectionIsDead]
        link = (live or self._idle)[0]
        self._idle.remove(link)
        return link

    async def _use(self, run: Callable[[_Link], Deferred[T]], bounded: bool = True) -> T:
        free = self._free
        if free is None:
            raise DatabaseError(detail="the pool is not started, or closed")
        # What the call waits for before it runs (cancelled at the deadline).
        acquired = free.acquire()
        waiting: Deferred[Any] | None = acquired
        link: _Link | None = None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting is not None:
                waiting.cancel()
            elif link is not None:
                link.drop(f"no answer within {self.timeout:g}s")

        timer = self._reactor.callLater(self.timeout, expire) if bounded else None
        try:
            try:
                await acquired
            except CancelledError:
                raise self._timedOut("waiting for a free connection") from None
            waiting = None
            link = self._checkout()
            inUse = self.metrics.dbInUse
            inUse.inc()
            try:
                if link.lostAt is not None:
                    # Broken just now?  It may well be back in a moment.
                    grace = link.lostAt + RECONNECT_GRACE - self._reactor.seconds()
                    if grace > 0:
                        back = waiting = link.reconnected(grace)
                        try:
                            await back
                        except CancelledError:
                            pass  # the deadline: what follows fails at once
                        waiting = None
                return await run(link)
            except _DRIVER_ERRORS as e:
                if expired:
                    raise self._timedOut(f"no answer within {self.timeout:g}s") from e
                if isinstance(e, reconnection.ConnectionDead) or link.detector.connectionIsDead:
                    self.metrics.dbErrors["connection"].inc()
                    raise DatabaseError(detail=_oneLine(e)) from e
                # A query the database refused: the connection is fine.
                self.metrics.dbErrors["query"].inc()
                self._log.warn("the metadata database failed: {why}", why=_oneLine(e))
                raise DatabaseError("the metadata database failed", detail=_oneLine(e)) from e
            finally:
                inUse.dec()
                if link in self._links:
                    self._idle.append(link)
                    free.release()
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    def _timedOut(self, why: str) -> DatabaseError:
        self.metrics.dbErrors["timeout"].inc()
        self._log.warn("a call to the metadata database timed out: {why}", why=why)
        return DatabaseError(
            f"the metadata database did not answer within {self.timeout:g}s; try again shortly",
            detail=why,
        )

    def query(self, sql: str, args: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return _shielded(self._use(lambda link: link.runQuery(sql, args)))

    def operation(self, sql: str, args: Sequence[Any] = ()) -> Deferred[None]:
        return _shielded(self._use(lambda link: link.runOperation(sql, args)))

    def interaction(
        self, f: Callable[..., Deferred[T]], *args: Any, bounded: bool = True
    ) -> Deferred[T]:
        """
        Run C{f(cursor, *args)} in a transaction.  C{bounded=False} lifts
        the time bound, for the migrations (an index built on a large
        table, another instance's migration to wait for).
        """
        return _shielded(self._use(lambda link: link.runInteraction(f, *args), bounded))


#: The channel every change to a ready record is announced on, as
#: C{kind/uuid} (schema/0007_resource_changes).
CHANGES = "morpheo_resource"


#: How often the link changes are heard on is checked, in seconds: a link
#: that froze (a dead route) says nothing, and its silence is no news.
HEARING_CHECK = 1.0


class ChangeListener:
    """
    The changes to ready records, heard on a link of its own (C{LISTEN}
    L{CHANGES}) and told to an L{IChangeObserver}, whichever node or
    operator made them.  Notifications sent while a link is away are lost
    for good: the observer is deaf from the moment the link breaks (or
    fails to answer a check within C{timeout}, every L{HEARING_CHECK}
    seconds) until it listens again on the new one.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        dsn: str,
        observer: IChangeObserver,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._dsn = dsn
        self.observer = observer
        self.timeout = timeout
        self._link: _Link | None = None
        self._checks = LoopingCall(self._check)
        self._checks.clock = reactor

    async def start(self) -> None:
        # The notifications are told at once, on this reactor.
        cooperator = Cooperator(scheduler=lambda run: self._reactor.callLater(0, run))
        link = self._link = _Link(
            self._reactor, _Detector(self._reactor, self), self.timeout, cooperator
        )
        link.addNotifyObserver(self._notified)
        try:
            await link.connect(self._dsn)
            await self._listen(link)
        except _DRIVER_ERRORS as e:
            self.close()
            raise DatabaseError(
                f"cannot listen to the metadata database: {_oneLine(e)}", detail=_oneLine(e)
            ) from e
        self._checks.start(HEARING_CHECK, now=False)

    def close(self) -> None:
        if self._checks.running:
            self._checks.stop()
        link, self._link = self._link, None
        if link is not None:
            link.detector.stop()
            link.drop("the service is stopping")
        self.observer.deaf()

    async def _listen(self, link: _Link) -> None:
        await link.runOperation(f"LISTEN {CHANGES}")
        self.observer.listening()

    async def _check(self) -> None:
        link = self._link
        if link is None or link.lostAt is not None:
            return
        timer = self._reactor.callLater(
            self.timeout, link.drop, f"no answer within {self.timeout:g}s"
        )
        try:
            await link.runOperation("SELECT 1")
        except _DRIVER_ERRORS:
            pass  # dropped, or broken: its detector takes it from there
        finally:
            if timer.active():
                timer.cancel()

    def _notified(self, notify: Any) -> None:
        kind, _, uuid = str(notify.payload).partition("/")
        self.observer.changed(kind, uuid)

    # What the link's detector tells

    def _lost(self, link: _Link, failure: Failure) -> None:
        link.lostAt = self._reactor.seconds()
        self.observer.deaf()

    def _unreachable(self, failure: Failure) -> None:
        pass  # the pool's links say so

    def _recovered(self, link: _Link) -> None:
        link.back()
        if link is not self._link:  # closed meanwhile
            link.drop("the service is stopping")
            return

        def failed(failure: Failure) -> None:
            # Heard nothing: the link is dropped, and opened again.
            link.drop(f"cannot listen: {_oneLine(failure.value)}")

        Deferred.fromCoroutine(self._listen(link)).addErrback(failed)


def _shielded(call: Coroutine[Any, Any, T]) -> Deferred[T]:
    """
    The outcome of C{call}, in a Deferred whose cancellation (Klein cancels
    the handler of a client that went away) fails it at once but leaves the
    call to end on its own, within its bound: txpostgres would cancel a
    query with libpq's blocking PQcancel, which on a frozen link blocks the
    reactor for good.
    """
    running = Deferred.fromCoroutine(call)
    outcome: Deferred[T] = Deferred(lambda _: None)

    def relay(result: object) -> None:
        if not outcome.called:
            outcome.callback(result)  # type: ignore[arg-type]

    running.addBoth(relay)
    return outcome


@implementer(IMetadataStore, IUploadMetadataStore)
class PostgresMetadataStore:
    """
    L{IMetadataStore} on a L{Database}.

    A uuid is claimed by inserting a C{pending} row (the primary key makes
    two concurrent claims of one uuid end with exactly one winner); the row
    becomes C{ready}, with the blob's size, sha256 and key, only once the
    blob is committed.  Readers see C{ready} rows only.  The columns of the
    kinds' text fields and parents are read from L{morpheo._kinds}.
    """

    def __init__(self, db: Database, owner: str = "") -> None:
        self.db = db
        self.owner = owner

    async def ping(self) -> None:
        await self.db.query("SELECT 1")

    async def claim(self, claim: Claim) -> None:
        if TABLE[claim.kind].parent is None:
            # One statement, one round trip: no transaction to open.
            if not await self.db.query(*self._claimInsert(claim)):
                raise Taken(claim.kind, claim.uuid)
            return
        await self.db.interaction(lambda c: Deferred.fromCoroutine(self._claim(c, claim)))

    def _claimInsert(self, claim: Claim) -> tuple[str, list[object]]:
        """The statement that makes C{claim}, returning a row if it did."""
        kind = TABLE[claim.kind]
        columns = [
            "kind",
            "uuid",
            "blob_key",
            "content_type",
            "filename",
            "claimed_by",
            "claim_token",
        ]
        values: list[object] = [
            claim.kind,
            claim.uuid,
            claim.blobKey,
            claim.label.contentType,
            claim.label.filename,
            self.owner,
            claim.token,
        ]
        for name, value in claim.text.items():
            columns.append(_textColumn(name))
            values.append(value)
        if kind.parent is not None:
            columns.append(kind.parent)
            values.append(claim.parent)
        insert = (
            f"INSERT INTO resource ({', '.join(columns)}, state)"
            f" VALUES ({', '.join(['%s'] * len(values))}, 'pending')"
            " ON CONFLICT DO NOTHING RETURNING 1"
        )
        return insert, values

    async def _claim(self, cursor: Any, claim: Claim) -> None:
        """Make C{claim} in the transaction of C{cursor}."""
        parent = TABLE[claim.kind].parent
        if parent is not None:
            # Held (FOR SHARE) until the claim is in: the parent cannot
            # be deleted meanwhile.
            await cursor.execute(
                "SELECT 1 FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'"
                " FOR SHARE",
                (parent, claim.parent),
            )
            if cursor.fetchone() is None:
                raise NoSuchParent(parent, claim.parent or "")
        await cursor.execute(*self._claimInsert(claim))
        if cursor.fetchone() is None:
            raise Taken(claim.kind, claim.uuid)

    async def release(self, kind: str, uuid: str, token: str) -> None:
        await self.db.operation(
            "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'"
            " AND claim_token = %s",
            (kind, uuid, token),
        )

    async def complete(self, kind: str, uuid: str, token: str, blob: BlobInfo) -> StoredObject:
        rows = await self.db.query(
            "UPDATE resource SET state = 'ready', size = %s, sha256 = %s, claim_token = NULL,"
            " upload_handle = NULL,"
            " seq = nextval(pg_get_serial_sequence('resource', 'seq')),"
            " timestamp_upload = floor(EXTRACT(EPOCH FROM clock_timestamp()))::bigint"
            " WHERE kind = %s AND uuid = %s AND state = 'pending' AND claim_token = %s"
            f" RETURNING {_COLUMNS}",
            (blob.size, blob.sha256, kind, uuid, token),
        )
        if not rows:
            raise ClaimLost(kind, uuid)
        return _stored(rows[0])

    async def get(self, kind: str, uuid: str) -> StoredObject | None:
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'",
            (kind, uuid),
        )
        return _stored(rows[0]) if rows else None

    async def list(self, kind: str, listing: Listing) -> builtins.list[StoredObject]:
        where: builtins.list[str] = ["kind = %s", "state = 'ready'"]
        args: builtins.list[object] = [kind]
        if listing.before is not None:
            where.append("seq < %s")
            args.append(listing.before)
        parentKind = TABLE[kind].parent
        if listing.parent is not None and parentKind is not None:
            where.append(f"{parentKind} = %s")
            args.append(listing.parent)
        if listing.namePrefix:
            where.append("name LIKE %s ESCAPE '\\'")
            args.append(_likePrefix(listing.namePrefix))
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM resource WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT %s OFFSET %s",
            (*args, listing.limit, listing.offset),
        )
        return [_stored(r) for r in rows]

    async def delete(self, kind: str, uuid: str) -> StoredObject:
        async def run(cursor: Any) -> StoredObject:
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM resource"
                " WHERE kind = %s AND uuid = %s AND state = 'ready' FOR UPDATE",
                (kind, uuid),
            )
            row = cursor.fetchone()
            if row is None:
                raise NoSuchObject(kind, uuid)
            for child in childrenOf(kind):
                await cursor.execute(
                    f"SELECT uuid::text FROM resource WHERE kind = %s AND {kind} = %s"
                    " ORDER BY seq LIMIT 20",
                    (child, uuid),
                )
                children = [r[0] for r in cursor.fetchall()]
                if children:
                    raise InUse(kind, uuid, children)
            await cursor.execute("DELETE FROM resource WHERE kind = %s AND uuid = %s", (kind, uuid))
            return _stored(row)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def change(self, kind: str, uuid: str, change: Change) -> Changed:
        async def run(cursor: Any) -> Changed:
            await cursor.execute(
                "SELECT blob_key FROM resource WHERE kind = %s AND uuid = %s AND state = 'ready'"
                " FOR UPDATE",
                (kind, uuid),
            )
            row = cursor.fetchone()
            if row is None:
                raise NoSuchObject(kind, uuid)
            newUUID = change.newUUID or uuid
            if change.claimed is not None:
                await cursor.execute(
                    "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'"
                    " AND claim_token = %s RETURNING 1",
                    (kind, *change.claimed),
                )
                if cursor.fetchone() is None:
                    raise ClaimLost(kind, newUUID)
            sets: builtins.list[str] = ["uuid = %s"]
            args: builtins.list[Any] = [newUUID]
            for name, value in change.text.items():
                sets.append(f"{_textColumn(name)} = %s")
                args.append(value)
            blob = change.blob
            if blob is not None:
                sets.append(
                    "size = %s, sha256 = %s, blob_key = %s, content_type = %s, filename = %s"
                )
                args.extend((blob.info.size, blob.info.sha256, blob.key, *astuple(blob.label)))
            await cursor.execute(
                f"UPDATE resource SET {', '.join(sets)} WHERE kind = %s AND uuid = %s"
                f" RETURNING {_COLUMNS}",
                (*args, kind, uuid),
            )
            return Changed(_stored(cursor.fetchone()), row[0] if blob is not None else None)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    # Recovery

    async def noteUpload(self, kind: str, uuid: str, token: str, handle: str) -> None:
        rows = await self.db.query(
            "UPDATE resource SET upload_handle = %s WHERE kind = %s AND uuid = %s"
            " AND state = 'pending' AND claim_token = %s RETURNING 1",
            (handle, kind, uuid, token),
        )
        if not rows:
            raise ClaimLost(kind, uuid)

    async def heartbeat(self, tokens: Sequence[str]) -> set[str]:
        if not tokens:
            return set()
        rows = await self.db.query(
            "UPDATE resource SET heartbeat = now() WHERE state = 'pending'"
            " AND claim_token = ANY(%s) RETURNING claim_token",
            (builtins.list(tokens),),
        )
        return {r[0] for r in rows}

    async def takeDeadClaims(self, lease: float, mine: bool = False) -> builtins.list[DeadClaim]:
        # The new tokens are unique by the row's seq; the prefix, by process.
        rows = await self.db.query(
            "UPDATE resource SET claim_token = %s || seq::text, claimed_by = %s,"
            " heartbeat = now() WHERE state = 'pending'"
            " AND (heartbeat < now() - make_interval(secs => %s) OR (%s AND (claimed_by = %s"
            " OR left(claimed_by, %s) = %s)))"
            # An upload's claim lives as long as its upload, however long
            # between its requests.
            " AND NOT EXISTS (SELECT 1 FROM upload WHERE upload.claim_token = resource.claim_token)"
            " RETURNING kind, uuid::text, blob_key, claim_token, upload_handle",
            (
                f"swept.{secrets.token_hex(8)}.",
                self.owner,
                lease,
                mine,
                self.owner,
                len(self.owner) + 1,
                self.owner + "/",
            ),
        )
        return [DeadClaim(k, u, key, token, handle) for k, u, key, token, handle in rows]

    async def referencedKeys(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        rows = await self.db.query(
            "SELECT blob_key FROM resource WHERE blob_key = ANY(%s)"
            " UNION SELECT blob_key FROM upload WHERE blob_key = ANY(%s)",
            (builtins.list(keys), builtins.list(keys)),
        )
        return {r[0] for r in rows}

    # Resumable uploads

    async def openUpload(
        self, upload: Upload, claim: Claim | None, limit: int | None, lifetime: float
    ) -> Upload:
        async def run(cursor: Any) -> Upload:
            if limit is not None:
                # One creation at a time per owner, so that the count holds.
                await cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('morpheo-upload:' || %s))",
                    (upload.owner,),
                )
                await cursor.execute(
                    "SELECT count(*) FROM upload WHERE owner = %s AND expires > now()",
                    (upload.owner,),
                )
                if cursor.fetchone()[0] >= limit:
                    raise TooManyUploads(limit)
            if claim is not None:
                await self._claim(cursor, claim)
            await cursor.execute(
                "INSERT INTO upload (id, owner, kind, uuid, claim_token, blob_key, length,"
                ' "offset", store_state, concat, metadata, sha256, expires)'
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " now() + make_interval(secs => %s))"
                f" RETURNING {_UPLOAD_COLUMNS}",
                (
                    upload.id,
                    upload.owner,
                    upload.kind,
                    upload.uuid,
                    upload.token,
                    upload.blobKey,
                    upload.length,
                    upload.offset,
                    upload.state,
                    upload.concat.value,
                    json.dumps(dict(upload.metadata)),
                    upload.sha256,
                    lifetime,
                ),
            )
            return _upload(cursor.fetchone())

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def getUpload(self, uploadId: str) -> Upload | None:
        rows = await self.db.query(
            f"SELECT {_UPLOAD_COLUMNS} FROM upload WHERE id = %s AND expires > now()",
            (uploadId,),
        )
        return _upload(rows[0]) if rows else None

    async def takeUpload(self, uploadId: str, owner: str, busy: str, lease: float) -> Upload:
        async def run(cursor: Any) -> Upload:
            await cursor.execute(
                "UPDATE upload SET busy_token = %s,"
                " busy_until = now() + make_interval(secs => %s)"
                " WHERE id = %s AND owner = %s AND expires > now()"
                " AND (busy_token IS NULL OR busy_until < now())"
                f" RETURNING {_UPLOAD_COLUMNS}",
                (busy, lease, uploadId, owner),
            )
            row = cursor.fetchone()
            if row is not None:
                return _upload(row)
            await cursor.execute(
                "SELECT 1 FROM upload WHERE id = %s AND owner = %s AND expires > now()",
                (uploadId, owner),
            )
            if cursor.fetchone() is None:
                raise NoSuchUpload(uploadId)
            raise UploadBusy()

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def recordUpload(
        self,
        uploadId: str,
        busy: str,
        state: str,
        offset: int,
        length: int | None,
        concluded: bool,
        lifetime: float,
    ) -> Upload:
        rows = await self.db.query(
            'UPDATE upload SET store_state = %s, "offset" = %s, length = COALESCE(%s, length),'
            " concluded = %s, expires = now() + make_interval(secs => %s), updated = now(),"
            " busy_token = NULL, busy_until = NULL"
            f" WHERE id = %s AND busy_token = %s RETURNING {_UPLOAD_COLUMNS}",
            (state, offset, length, concluded, lifetime, uploadId, busy),
        )
        if not rows:
            raise UploadLost()
        return _upload(rows[0])

    async def leaveUpload(self, uploadId: str, busy: str) -> None:
        await self.db.operation(
            "UPDATE upload SET busy_token = NULL, busy_until = NULL"
            " WHERE id = %s AND busy_token = %s",
            (uploadId, busy),
        )

    async def refreshUploads(self, busy: Sequence[str], lease: float) -> set[str]:
        if not busy:
            return set()
        rows = await self.db.query(
            "UPDATE upload SET busy_until = now() + make_interval(secs => %s)"
            " WHERE busy_token = ANY(%s) RETURNING busy_token",
            (lease, builtins.list(busy)),
        )
        return {r[0] for r in rows}

    async def finishUpload(self, uploadId: str, busy: str, blob: BlobInfo) -> StoredObject:
        async def run(cursor: Any) -> StoredObject:
            await cursor.execute(
                "DELETE FROM upload WHERE id = %s AND busy_token = %s"
                " RETURNING kind, uuid::text, claim_token",
                (uploadId, busy),
            )
            row = cursor.fetchone()
            if row is None:
                raise UploadLost()
            kind, uuid, token = row
            await cursor.execute(
                "UPDATE resource SET state = 'ready', size = %s, sha256 = %s,"
                " claim_token = NULL, upload_handle = NULL,"
                " seq = nextval(pg_get_serial_sequence('resource', 'seq')),"
                " timestamp_upload = floor(EXTRACT(EPOCH FROM clock_timestamp()))::bigint"
                " WHERE kind = %s AND uuid = %s AND state = 'pending' AND claim_token = %s"
                f" RETURNING {_COLUMNS}",
                (blob.size, blob.sha256, kind, uuid, token),
            )
            done = cursor.fetchone()
            if done is None:
                raise ClaimLost(kind, uuid)
            return _stored(done)

        return await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def dropUpload(self, uploadId: str, busy: str) -> None:
        async def run(cursor: Any) -> None:
            await cursor.execute(
                "DELETE FROM upload WHERE id = %s AND busy_token = %s"
                " RETURNING kind, uuid::text, claim_token",
                (uploadId, busy),
            )
            row = cursor.fetchone()
            if row is not None and row[2] is not None:
                await cursor.execute(
                    "DELETE FROM resource WHERE kind = %s AND uuid = %s AND state = 'pending'"
                    " AND claim_token = %s",
                    row,
                )

        await self.db.interaction(lambda c: Deferred.fromCoroutine(run(c)))

    async def takeExpiredUploads(self, busy: str, lease: float) -> builtins.list[Upload]:
        rows = await self.db.query(
            "UPDATE upload SET busy_token = %s, busy_until = now() + make_interval(secs => %s)"
            " WHERE expires <= now() AND (busy_token IS NULL OR busy_until < now())"
            f" RETURNING {_UPLOAD_COLUMNS}",
            (busy, lease),
        )
        return [_upload(r) for r in rows]


#: The name this store had before L{IMetadataStore}; kept for embedders.
MetadataStore = PostgresMetadataStore
