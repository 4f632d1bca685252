"""
Fixtures: one real server for the session, a treq client per test.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from tests._server import Server, startServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = startServer(str(tmp_path_factory.mktemp("server")))
    yield s
    s.stop()


@pytest.fixture
def http() -> Iterator[HTTPClient]:
    """A treq client on a non-persistent pool: nothing left open after a test."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield HTTPClient(Agent(reactor, pool=pool))


@pytest.fixture
def blob(tmp_path: object) -> bytes:
    return os.urandom(100_000)


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
