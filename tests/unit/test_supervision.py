"""
The embedded PostgreSQL's supervision (L{EmbeddedPostgres.supervise}) on a
clock of its own, its server a stand-in for the wheel's: a postmaster that
dies is started again on the next look, once it is gone for good (a
zombie is not); the log says so once; no restart once the service stops.
The real kill is in L{tests.integration.test_db_outages}.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
from attrs import define, field
from twisted.logger import capturedLogs, formatEvent

from morpheo.metadata._embedded import EmbeddedPostgres, _runtimeDir

from .harness import FakeReactor, ImmediatePool

#: Above the kernel's largest pid: no process ever has it.
NO_SUCH_PID = 2**22 + 1


@define
class Process:
    """What the supervisor asks of a psutil process."""

    pid: int
    state: str = "running"

    def status(self) -> str:
        return self.state

    def is_running(self) -> bool:
        return self.state != "gone"

    def ppid(self) -> int:
        return 1


@define
class Info:
    pid: int
    process: Process | None


@define
class Server:
    """The wheel's server, as the supervisor uses it."""

    info: Info
    starts: int = 0
    fails: bool = False
    cleaned: bool = False
    _lock: Any = field(factory=contextlib.nullcontext)
    _postmaster_info: Any = None

    def get_postmaster_info(self) -> Info:
        return self.info

    def ensure_postgres_running(self) -> None:
        if self.fails:
            raise RuntimeError("pg_ctl: could not start server")
        self.starts += 1
        self.info = Info(NO_SUCH_PID + 100 + self.starts, Process(NO_SUCH_PID + 100))

    def cleanup(self) -> None:
        self.cleaned = True


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def server() -> Server:
    return Server(Info(NO_SUCH_PID, Process(NO_SUCH_PID)))


@pytest.fixture
def embedded(reactor: FakeReactor, server: Server) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres("pgdata", "db", reactor, ImmediatePool())  # type: ignore[arg-type]
    pg._server = server
    pg.supervise(reactor)
    yield pg
    pg.unsupervise()


def said(events: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("Postgres")]


def test_aLivePostmasterIsLeftAlone(
    reactor: FakeReactor, server: Server, embedded: EmbeddedPostgres
) -> None:
    with capturedLogs() as events:
        reactor.advance(1)
        reactor.advance(1)
    assert server.starts == 0
    assert said(events) == []


def test_aDeadPostmasterIsStartedAgainOnTheNextLook(
    reactor: FakeReactor, server: Server, embedded: EmbeddedPostgres
) -> None:
    assert server.info.process is not None
    server.info.process.state = "gone"
    with capturedLogs() as events:
        reactor.advance(1)
        reactor.advance(1)
    assert server.starts == 1
    assert said(events) == [
        f"the embedded PostgreSQL (pid {NO_SUCH_PID}) died; starting it again",
        f"the embedded PostgreSQL is running again (pid {server.info.pid})",
    ]


def test_aZombieIsWaitedForThenReplaced(
    reactor: FakeReactor, server: Server, embedded: EmbeddedPostgres
) -> None:
    """
    A dead postmaster not yet reaped by its parent still holds its pid,
    which PostgreSQL would take for a running server: wait, saying so once.
    """
    server.info = Info(os.getpid(), Process(os.getpid(), psutil.STATUS_ZOMBIE))
    with capturedLogs() as events:
        for _ in range(3):
            reactor.advance(1)
        assert server.starts == 0
        server.info = Info(NO_SUCH_PID, Process(NO_SUCH_PID, "gone"))  # reaped
        reactor.advance(1)
    assert server.starts == 1
    lines = said(events)
    assert len(lines) == 3, lines
    assert lines[0] == f"the embedded PostgreSQL (pid {os.getpid()}) died; starting it again"
    assert lines[1].startswith("cannot start the embedded PostgreSQL again yet (its dead")
    assert lines[2].startswith("the embedded PostgreSQL is running again")


def test_aFailedStartIsSaidOnceAndTriedEverySecond(
    reactor: FakeReactor, server: Server, embedded: EmbeddedPostgres
) -> None:
    assert server.info.process is not None
    server.info.process.state = "gone"
    server.fails = True
    with capturedLogs() as events:
        for _ in range(4):
            reactor.advance(1)
        server.fails = False
        reactor.advance(1)
    assert server.starts == 1
    assert [line.split(" (")[0] for line in said(events)] == [
        "the embedded PostgreSQL",
        "cannot start the embedded PostgreSQL again yet",
        "the embedded PostgreSQL is running again",
    ]


def test_noRestartOnceStopping(
    reactor: FakeReactor, server: Server, embedded: EmbeddedPostgres
) -> None:
    """The service's stop comes first: a death after it is left alone."""
    stopped = embedded.stop()
    assert stopped.called and server.cleaned
    assert server.info.process is not None
    server.info.process.state = "gone"
    reactor.advance(1)
    assert server.starts == 0
    assert reactor.getDelayedCalls() == []


def test_aDeadServerIsNotWaitedForAtStop(
    reactor: FakeReactor, server: Server, embedded: EmbeddedPostgres
) -> None:
    """Stopping a dead (zombie) postmaster would have pg_ctl wait a minute."""
    server._postmaster_info = server.info
    server.info = Info(os.getpid(), Process(os.getpid(), psutil.STATUS_ZOMBIE))
    embedded.stop()
    assert server.cleaned and server._postmaster_info is None


# The runtime directory the wheel is imported with


def test_theWheelGetsAPrivateRuntimeDirectoryForItsImportOnly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """
    Without C{XDG_RUNTIME_DIR}, the wheel's import finds one of the
    service's own, private, and the environment is as it was afterwards.
    """
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with _runtimeDir():
        path = os.environ["XDG_RUNTIME_DIR"]
        assert path == str(tmp_path / f"morpheo-storage-{os.geteuid()}")
        assert os.stat(path).st_mode & 0o777 == 0o700
    assert "XDG_RUNTIME_DIR" not in os.environ
    os.chmod(path, 0o755)  # as the wheel's lock leaves a directory it makes
    with _runtimeDir():
        assert os.stat(os.environ["XDG_RUNTIME_DIR"]).st_mode & 0o777 == 0o700


def test_aRuntimeDirectoryAlreadyGivenIsKept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    with _runtimeDir():
        assert os.environ["XDG_RUNTIME_DIR"] == "/run/user/1234"
    assert os.environ["XDG_RUNTIME_DIR"] == "/run/user/1234"
