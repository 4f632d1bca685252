"""
C{--workers}: the option (a count, C{auto}, bounds, refusals), what the
parent hands a worker, the claims' owner names that make a replacement
take exactly its predecessor's uploads, and the supervision of the
workers on a fake clock (replacement, backoff, stop).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from morpheo import ConfigError, StorageConfig
from morpheo._types import Claim
from morpheo.metadata import MemoryMetadataStore
from morpheo.objects import blobKey
from morpheo.service._handoff import HandoffError, WorkerHandoff, workerOwner
from morpheo.service._workers import (
    FIRST_DELAY,
    MAX_DELAY,
    STABLE_AFTER,
    ParentWatch,
    Supervisor,
    WorkerFailed,
    WorkerState,
    describeExit,
    parseWorkers,
    workerCommand,
)
from morpheo.tap import Options

from .test_local_dir import FakeReactor, now

USERS = ["--user", "alice", "--password", "secret"]


def workersOption(value: str) -> int:
    options = Options()
    options.parseOptions([*USERS, "--workers", value])
    return options.config().workers


def test_theDefaultIsOneProcess() -> None:
    options = Options()
    options.parseOptions(USERS)
    assert options.config().workers == 1


@pytest.mark.parametrize("value", ["1", "2", "16", " 3 "])
def test_aCount(value: str) -> None:
    assert workersOption(value) == int(value)


def test_autoIsOnePerCoreThisProcessMayUse() -> None:
    assert workersOption("auto") == len(os.sched_getaffinity(0))
    assert parseWorkers("AUTO") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-1", "257", "two", "1.5", ""])
def test_refusals(value: str) -> None:
    with pytest.raises(usage.UsageError) as excinfo:
        workersOption(value)
    assert str(excinfo.value) == f"--workers must be 1 to 256 or auto, not {value!r}"


def test_theConfigurationChecksItsCountToo() -> None:
    with pytest.raises(ConfigError, match="--workers must be 1 to 256, not 0"):
        StorageConfig(user="a", password="b", workers=0)
    with pytest.raises(ConfigError, match="worker 2 is not one of the 2 workers"):
        StorageConfig(user="a", password="b", workers=2, worker=2)


def handoff(**changes: Any) -> WorkerHandoff:
    fields: dict[str, Any] = {
        "index": 1,
        "count": 2,
        "parentPid": 4242,
        "owner": "host/abc/w1",
        "dsn": "host=/tmp port=5432 dbname=x",
        "listenFDs": (4, 5),
        "statusFD": 3,
        "metricsDirectory": "/tmp/run",
        "password": None,
    }
    fields.update(changes)
    return WorkerHandoff(**fields)


def test_aHandoffSurvivesItsJourney() -> None:
    sent = handoff(password="generated")
    assert WorkerHandoff.fromJSON(sent.toJSON()) == sent


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"index": 1}', b"\xff"])
def test_aBrokenHandoffIsRefused(data: bytes) -> None:
    with pytest.raises(HandoffError, match="not a worker's handoff"):
        WorkerHandoff.fromJSON(data)


def test_aWorkerGetsItsIndexTheRunsDirectoryAndTheGeneratedPassword() -> None:
    options = Options()
    options.parseOptions(["--workers", "2"])
    generated = options.config()
    assert generated.generatedPassword
    config = handoff(password="the parent's").configure(generated)
    assert (config.worker, config.metricsDirectory) == (1, "/tmp/run")
    assert config.password == "the parent's"
    # A password given on the command line is the worker's own, as the parent's.
    given = handoff(password=None).configure(StorageConfig(user="a", password="b", workers=2))
    assert given.password == "b"


def test_theWorkersCommandLine(tmp_path: Any) -> None:
    foreground = workerCommand(["--workers", "2"], {"nodaemon": True}, "/py")
    assert foreground(1)[-5:] == ["--pidfile=", "--logfile=-", "morpheo-storage", "--workers", "2"]
    log = str(tmp_path / "x.log")
    toFile = workerCommand([], {"nodaemon": True, "logfile": log}, "/py")
    assert f"--logfile={log}.worker-0" in toFile(0)
    assert "--nodaemon" in toFile(0)


def takeClaim(metadata: MemoryMetadataStore) -> Claim:
    u = str(uuid.uuid4())
    claim = Claim("data", u, blobKey("data", u), token=f"t-{u}")
    now(metadata.claim(claim))
    return claim


def test_aReplacementTakesItsPredecessorsClaimsOnly() -> None:
    """
    At start (C{mine}), worker 1 takes what the worker 1 before it left,
    never its live siblings' (nor a worker 10's, whose name starts alike).
    """
    parent = MemoryMetadataStore(FakeReactor(), owner="host/abc")
    dead = takeClaim(parent.sibling(workerOwner("host/abc", 1)))
    live = takeClaim(parent.sibling(workerOwner("host/abc", 0)))
    tenth = takeClaim(parent.sibling(workerOwner("host/abc", 10)))
    replacement = parent.sibling(workerOwner("host/abc", 1))
    taken = now(replacement.takeDeadClaims(60.0, mine=True))
    assert [claim.uuid for claim in taken] == [dead.uuid]
    assert live.uuid != tenth.uuid


def test_theParentTakesEveryClaimOfItsPreviousRunsWorkers() -> None:
    parent = MemoryMetadataStore(FakeReactor(), owner="host/abc")
    left = {takeClaim(parent.sibling(workerOwner("host/abc", i))).uuid for i in range(3)} | {
        takeClaim(parent).uuid
    }
    takeClaim(parent.sibling("host/abcd/w0"))  # another data directory's
    taken = now(parent.takeDeadClaims(60.0, mine=True))
    assert {claim.uuid for claim in taken} == left


class FakeProcess:
    """A worker as the supervisor sees it: a pid, and the signals sent to it."""

    pids = iter(range(1000, 100000))

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = next(self.pids)
        self.signals: list[str] = []
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)


class Workers:
    """A supervisor of fake processes on a fake clock."""

    def __init__(self, count: int = 2) -> None:
        self.clock = Clock()
        self.spawned: list[FakeProcess] = []
        self.supervisor = Supervisor(count, self.spawn, self.clock)

    def spawn(self, index: int) -> FakeProcess:
        process = FakeProcess(index)
        self.spawned.append(process)
        return process

    def current(self, index: int) -> FakeProcess:
        return [p for p in self.spawned if p.index == index][-1]

    def ready(self, index: int) -> None:
        self.supervisor.ready(index)

    def die(self, index: int, how: str = "signal 9 (SIGKILL)") -> None:
        self.current(index).ended = True
        self.supervisor.exited(index, how)

    def started(self) -> Deferred[None]:
        d = self.supervisor.start()
        for i in range(self.supervisor.count):
            self.ready(i)
        return d


def fired(d: Deferred[Any]) -> list[Any]:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    return outcome


def test_theStartIsDoneWhenEveryWorkerIsReady() -> None:
    workers = Workers(3)
    outcome = fired(workers.supervisor.start())
    workers.ready(0)
    workers.ready(2)
    assert outcome == []
    workers.ready(1)
    assert outcome == [None]
    assert workers.supervisor.states() == [WorkerState.READY] * 3
    assert workers.supervisor.pids() == [p.pid for p in workers.spawned]


def test_aWorkerThatDiesBeforeTheStartIsDoneFailsTheStart() -> None:
    workers = Workers(2)
    outcome = fired(workers.supervisor.start())
    workers.ready(0)
    workers.die(1, "status 1")
    assert isinstance(outcome[0], Failure)
    assert outcome[0].check(WorkerFailed)
    assert str(outcome[0].value) == "worker 1 exited with status 1 before it was ready"
    assert len(workers.spawned) == 2  # none replaced: the start failed


def test_aWorkerThatLivedAWhileIsReplacedAtOnce() -> None:
    workers = Workers(2)
    assert fired(workers.started()) == [None]
    first = workers.current(1)
    workers.clock.advance(STABLE_AFTER)
    workers.die(1)
    workers.clock.advance(0)
    replacement = workers.current(1)
    assert replacement is not first
    assert workers.supervisor.states()[1] is WorkerState.STARTING
    workers.ready(1)
    assert workers.supervisor.states() == [WorkerState.READY] * 2
    # The other worker was left alone.
    assert len([p for p in workers.spawned if p.index == 0]) == 1


def test_aWorkerThatKeepsDyingAtStartIsReplacedLessAndLessOften() -> None:
    workers = Workers(1)
    fired(workers.started())
    workers.clock.advance(STABLE_AFTER)
    workers.die(0)
    workers.clock.advance(0)
    delays = []
    for _ in range(8):
        before = len(workers.spawned)
        workers.die(0, "status 1")
        waited = 0.0
        while len(workers.spawned) == before:
            assert workers.supervisor.states() == [WorkerState.WAITING]
            workers.clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [FIRST_DELAY, 2.0, 4.0, 8.0, 16.0, MAX_DELAY, MAX_DELAY, MAX_DELAY]
    # Once it lives a while, its next death is replaced at once again.
    workers.ready(0)
    workers.clock.advance(STABLE_AFTER)
    before = len(workers.spawned)
    workers.die(0)
    workers.clock.advance(0)
    assert len(workers.spawned) == before + 1


def test_stopSignalsEveryWorkerAndReplacesNone() -> None:
    workers = Workers(2)
    fired(workers.started())
    done = fired(workers.supervisor.stop(timeout=40))
    assert [p.signals for p in workers.spawned] == [["TERM"], ["TERM"]]
    workers.die(0, "status 0")
    assert done == []
    workers.die(1, "status 0")
    assert done == [None]
    workers.clock.advance(100)
    assert len(workers.spawned) == 2
    assert [p.signals for p in workers.spawned] == [["TERM"], ["TERM"]]


def test_aWorkerThatDoesNotStopInTimeIsKilled() -> None:
    workers = Workers(2)
    fired(workers.started())
    done = fired(workers.supervisor.stop(timeout=40))
    workers.die(0, "status 0")
    workers.clock.advance(39)
    assert workers.current(1).signals == ["TERM"]
    workers.clock.advance(1)
    assert workers.current(1).signals == ["TERM", "KILL"]
    assert workers.current(0).signals == ["TERM"]
    workers.die(1)
    assert done == [None]


def test_stopCancelsAReplacementDue() -> None:
    workers = Workers(1)
    fired(workers.started())
    workers.die(0)  # died young: its replacement waits
    assert workers.supervisor.states() == [WorkerState.WAITING]
    assert fired(workers.supervisor.stop(timeout=40)) == [None]
    workers.clock.advance(MAX_DELAY)
    assert len(workers.spawned) == 1
    assert workers.supervisor.states() == [WorkerState.EXITED]


def test_howAWorkerEnded() -> None:
    assert describeExit(Failure(ProcessDone(0))) == "status 0"
    assert describeExit(Failure(ProcessTerminated(exitCode=1))) == "status 1"
    assert describeExit(Failure(ProcessTerminated(signal=9))) == "signal 9 (SIGKILL)"


class StoppableClock(Clock):
    stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def test_aWorkerStopsWhenItsParentIsGone() -> None:
    ours = StoppableClock()
    watch = ParentWatch(ours, os.getppid())
    watch.startService()
    ours.advance(5)
    assert ours.stopped == 0
    watch.stopService()
    orphaned = StoppableClock()
    gone = ParentWatch(orphaned, os.getppid() + 1)
    gone.startService()
    orphaned.advance(1)
    assert orphaned.stopped == 1
    orphaned.advance(5)
    assert orphaned.stopped == 1
    gone.stopService()


def test_aWorkerThatCannotBeStartedIsTriedAgainLater() -> None:
    workers = Workers(1)
    fired(workers.started())
    workers.clock.advance(STABLE_AFTER)
    failing = [OSError(24, "Too many open files")]

    def spawn(index: int) -> FakeProcess:
        if failing:
            raise failing.pop()
        return workers.spawn(index)

    workers.supervisor.spawn = spawn
    workers.die(0)
    workers.clock.advance(0)  # the spawn fails: tried again after a delay
    assert workers.supervisor.states() == [WorkerState.WAITING]
    assert len(workers.spawned) == 1
    workers.clock.advance(FIRST_DELAY)
    assert len(workers.spawned) == 2
    assert workers.supervisor.states() == [WorkerState.STARTING]


def test_aFailedSpawnFailsTheStart() -> None:
    def spawn(index: int) -> FakeProcess:
        raise OSError(12, "Cannot allocate memory")

    outcome = fired(Supervisor(1, spawn, Clock()).start())
    assert isinstance(outcome[0], Failure)
    assert str(outcome[0].value).startswith("worker 0 exited with no process (")
