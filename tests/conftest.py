"""
Fixtures: one real server for the session, a treq client per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from ._server import Server, startServer


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
