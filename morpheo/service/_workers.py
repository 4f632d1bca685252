# -*- test-case-name: tests.unit.test_workers,tests.integration.test_workers -*-
"""
C{--workers N}: N processes serve the same endpoints.

The parent process does what must happen once: it takes the data
directory (and a local store's blob directory), starts the embedded
PostgreSQL (or connects to the external one), applies the migrations,
sweeps what the previous run left (the claims of its workers included),
then binds every listener (C{--listen} endpoints, C{--host}/C{--port},
TLS, UNIX sockets) and starts the workers, each a C{twistd morpheo-storage}
with the same command line, which serve the sockets they inherit (so that a
port 0 is one port, a UNIX socket one file, and TLS files are read by
processes that were already checked to read them).  The kernel spreads the
connections among the workers.

The parent supervises them: a worker that exits unexpectedly is replaced
(the same index, hence the same claims' owner name: the replacement takes
over exactly the uploads the dead one left), at once if it had lived a
while, else after a delay that doubles up to L{MAX_DELAY}.  On SIGTERM or
SIGINT it stops listening, passes the signal on, waits for the workers to
finish their transfers (C{--shutdown-timeout}), and stops PostgreSQL last.
A worker whose parent is gone stops by itself.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from enum import Enum
from typing import IO, Any

from attrs import define, field
from prometheus_client.multiprocess import mark_process_dead
from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._metrics import MULTIPROC_ENV
from ._config import MAX_WORKERS, StorageConfig
from ._handoff import READY, WORKER_ENV, WorkerHandoff, workerOwner
from ._listen import ListenError, describe, makeListeners
from ._service import CLEANUP_TIMEOUT, StartupError, StorageService, _exitWith, handleStopSignals
from ._tls import TLSConfigError

#: The delay before replacing a worker that died young, doubled each time
#: it dies young again, up to L{MAX_DELAY} (seconds).
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
#: A worker that lived this long (seconds) died of something other than
#: its start: it is replaced at once.
STABLE_AFTER = 10.0
#: Beyond the shutdown timeout and the handlers' clean-up, how long the
#: parent waits for a stopping worker before it kills it (seconds).
STOP_MARGIN = 10.0

_log = Logger(namespace="morpheo.workers")


def parseWorkers(value: str) -> int:
    """
    C{--workers}: a count, or C{auto} for one per core this process may
    run on.

    @raise ValueError: with the option's name and why.
    """
    text = value.strip().lower()
    if text == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(cores, MAX_WORKERS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"--workers must be 1 to {MAX_WORKERS} or auto, not {value!r}")
    return int(text)


class WorkerState(Enum):
    """Where a worker's slot is."""

    STARTING = "starting"
    READY = "ready"
    #: Dead, its replacement due after a delay.
    WAITING = "waiting"
    #: Sent the stop signal.
    STOPPING = "stopping"
    EXITED = "exited"


class WorkerFailed(Exception):
    """A worker exited before it was ready, as the service started."""


@define
class _Slot:
    index: int
    state: WorkerState = WorkerState.EXITED
    process: Any = None
    pid: int | None = None
    spawnedAt: float = 0.0
    delay: float = FIRST_DELAY
    due: IDelayedCall | None = None
    exited: Deferred[None] | None = None


@define
class Supervisor:
    """
    Keeps C{count} workers running, each started by C{spawn(index)} (which
    returns the process: its C{pid}, C{signalProcess(name)}); the process
    calls L{ready} once it serves and L{exited} when it ends.  Pure logic
    on C{clock}: the processes are whatever C{spawn} makes.
    """

    count: int
    spawn: Callable[[int], Any]
    clock: IReactorTime
    firstDelay: float = FIRST_DELAY
    maxDelay: float = MAX_DELAY
    stableAfter: float = STABLE_AFTER
    _slots: list[_Slot] = field(init=False)
    _stopping: bool = field(init=False, default=False)
    _starting: Deferred[None] | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._slots = [_Slot(i, delay=self.firstDelay) for i in range(self.count)]

    def start(self) -> Deferred[None]:
        """Start them all; fires once each is ready, or fails with L{WorkerFailed}."""
        starting = self._starting = Deferred()
        for slot in self._slots:
            if self._starting is None:
                break  # one failed: the start with it
            self._spawn(slot)
        return starting

    def states(self) -> list[WorkerState]:
        return [slot.state for slot in self._slots]

    def pids(self) -> list[int | None]:
        """The workers' pids (None for one not running)."""
        return [
            slot.pid if slot.state not in (WorkerState.WAITING, WorkerState.EXITED) else None
            for slot in self._slots
        ]

    def _spawn(self, slot: _Slot) -> None:
        slot.due = None
        slot.state = WorkerState.STARTING
        slot.spawnedAt = self.clock.seconds()
        slot.pid = None
        try:
            slot.process = self.spawn(slot.index)
        except Exception as e:
            # No process (out of memory or descriptors): as a worker dead at
            # its start, tried again later.
            slot.process = None
            self.exited(slot.index, f"no process ({e})")
            return
        slot.pid = slot.process.pid
        slot.exited = Deferred()

    def ready(self, index: int) -> None:
        slot = self._slots[index]
        if slot.state is not WorkerState.STARTING:
            return
        slot.state = WorkerState.READY
        _log.info("worker {worker} (pid {pid}) is ready", worker=index, pid=slot.pid)
        starting = self._starting
        if starting is not None and all(s.state is WorkerState.READY for s in self._slots):
            self._starting = None
            starting.callback(None)

    def exited(self, index: int, how: str) -> None:
        """Worker C{index} ended, as C{how} says (C{status 1}, C{signal 9})."""
        slot = self._slots[index]
        wasReady = slot.state is WorkerState.READY
        expected = self._stopping or slot.state is WorkerState.STOPPING
        slot.state = WorkerState.EXITED
        slot.process = None
        exitedWaiter, slot.exited = slot.exited, None
        if exitedWaiter is not None:
            exitedWaiter.callback(None)
        if expected:
            return
        if self._starting is not None and not wasReady:
            starting, self._starting = self._starting, None
            starting.errback(WorkerFailed(f"worker {index} exited with {how} before it was ready"))
            return
        lived = self.clock.seconds() - slot.spawnedAt
        if lived >= self.stableAfter:
            slot.delay = self.firstDelay
            delay = 0.0
        else:
            delay = slot.delay
            slot.delay = min(slot.delay * 2, self.maxDelay)
        _log.warn(
            "worker {worker} (pid {pid}) exited with {how}; starting another {when}",
            worker=index,
            pid=slot.pid,
            how=how,
            when=f"in {delay:g}s" if delay else "now",
        )
        slot.state = WorkerState.WAITING
        slot.due = self.clock.callLater(delay, self._spawn, slot)

    def stop(self, timeout: float) -> Deferred[None]:
        """
        No more replacements; SIGTERM every worker, SIGKILL those still
        running after C{timeout} seconds; fires once all have exited.
        """
        self._stopping = True
        waiting: list[Deferred[None]] = []
        for slot in self._slots:
            if slot.due is not None:
                slot.due.cancel()
                slot.due = None
                slot.state = WorkerState.EXITED
            if slot.process is not None and slot.exited is not None:
                slot.state = WorkerState.STOPPING
                _signal(slot.process, "TERM")
                waiting.append(slot.exited)

        async def stop() -> None:
            if not waiting:
                return
            kill = self.clock.callLater(timeout, self._killAll)
            for exited in waiting:
                await exited
            if kill.active():
                kill.cancel()

        return Deferred.fromCoroutine(stop())

    def _killAll(self) -> None:
        for slot in self._slots:
            if slot.process is not None:
                _log.warn(
                    "worker {worker} (pid {pid}) did not stop in time: killed",
                    worker=slot.index,
                    pid=slot.pid,
                )
                _signal(slot.process, "KILL")


def _signal(process: Any, name: str) -> None:
    try:
        process.signalProcess(name)
    except ProcessExitedAlready:
        pass


def describeExit(reason: Failure) -> str:
    """C{status 0}, C{status 1}, C{signal 9 (SIGKILL)}."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                return f"signal {value.signal} ({signal.Signals(value.signal).name})"
            except ValueError:
                return f"signal {value.signal}"
        return f"status {value.exitCode}"
    return str(value)


class _WorkerProtocol(protocol.ProcessProtocol):
    """The parent's end of one worker: its status descriptor and its end."""

    def __init__(
        self, supervisor: Supervisor, index: int, metricsDirectory: str | None = None
    ) -> None:
        self._supervisor = supervisor
        self._index = index
        self._status = b""
        self.metricsDirectory = metricsDirectory
        #: The worker's pid, once spawned (the transport forgets it at the end).
        self.pid: int | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._status += data
        if READY in self._status:
            self._status = b""
            self._supervisor.ready(self._index)

    def processEnded(self, reason: Failure) -> None:
        if self.pid is not None and self.metricsDirectory is not None:
            # Its gauges no longer add to the workers' sum.
            mark_process_dead(self.pid, self.metricsDirectory)
        self._supervisor.exited(self._index, describeExit(reason))


class ParentWatch(service.Service):
    """
    In a worker: stop (gracefully) when the parent is gone, killed without
    the chance to stop its workers.
    """

    def __init__(self, reactor: Any, parentPid: int, interval: float = 1.0) -> None:
        self._reactor = reactor
        self._parentPid = parentPid
        self._interval = interval
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() != self._parentPid:
            _log.warn("the parent process {pid} is gone: stopping", pid=self._parentPid)
            self._loop.stop()
            self._reactor.stop()


#: The descriptors of a worker: its handoff on stdin, its log on stdout and
#: stderr (the parent's), its status, then the listening sockets.
STATUS_FD = 3
FIRST_LISTEN_FD = 4


class WorkersService(service.Service):
    """
    The parent of C{--workers}: see the module's docstring.  C{command(i)}
    is worker C{i}'s argv (a twistd command line with the same plugin
    options); its environment is the parent's.
    """

    def __init__(
        self,
        config: StorageConfig,
        reactor: Any,
        command: Callable[[int], Sequence[str]],
        stderr: IO[str],
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._command = command
        self._stderr = stderr
        self._inner = StorageService(config, reactor, stderr, listen=False, preparing=True)
        self._ports: list[IListeningPort] = []
        self._supervisor: Supervisor | None = None
        self._metricsDirectory: str | None = None
        self.addresses: list[str] = []
        self.started: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(handleStopSignals, self._reactor)
        d = Deferred.fromCoroutine(self._start())
        d.addCallbacks(self.started.callback, self._startFailed)

    def _startFailed(self, failure: Failure) -> None:
        if not failure.check(_Reported):
            if failure.check(StartupError, WorkerFailed):
                message = str(failure.value)
            else:
                _log.failure("unexpected failure at start-up", failure)
                message = f"{type(failure.value).__name__}: {failure.value}"
            self._stderr.write(f"morpheo-storage: cannot start: {message}\n")
            self._stderr.flush()
        self.started.errback(failure)
        atexit.register(_exitWith, 1)
        self._reactor.callWhenRunning(self._reactor.stop)

    async def _start(self) -> None:
        config = self.config
        try:
            listeners = makeListeners(
                self._reactor,
                listen=config.listen,
                host=config.host,
                port=config.port,
                cert=config.cert,
                key=config.key,
            )
        except (TLSConfigError, ListenError) as e:
            raise StartupError(str(e)) from None
        self._inner.startService()
        try:
            await self._inner.started
        except Exception:
            raise _Reported() from None
        for listener in listeners:
            try:
                port = await listener.endpoint.listen(_Holder())
            except Exception as e:
                raise StartupError(f"cannot listen on {listener.description}: {e}") from None
            # The workers accept; this process only holds the socket.
            port.stopReading()  # type: ignore[attr-defined]
            self._ports.append(port)
            self.addresses.append(describe(port, listener.tls))
        self._metricsDirectory = _runDirectory(config)
        self._supervisor = Supervisor(config.workers, self._spawn, self._reactor)
        await self._supervisor.start()
        for address in self.addresses:
            _log.info(
                "morpheo-storage listening on {address} (blob store: {store})",
                address=address,
                store=self._inner.storeName,
            )
        _log.info(
            "serving with {n} workers (pids {pids})",
            n=config.workers,
            pids=", ".join(str(pid) for pid in self._supervisor.pids()),
        )

    def _spawn(self, index: int) -> Any:
        assert self._supervisor is not None and self._inner.owner and self._inner.dsn
        assert self._metricsDirectory is not None
        listenFDs = tuple(FIRST_LISTEN_FD + i for i in range(len(self._ports)))
        handoff = WorkerHandoff(
            index=index,
            count=self.config.workers,
            parentPid=os.getpid(),
            owner=workerOwner(self._inner.owner, index),
            dsn=self._inner.dsn,
            listenFDs=listenFDs,
            statusFD=STATUS_FD,
            metricsDirectory=self._metricsDirectory,
            password=self.config.password if self.config.generatedPassword else None,
        )
        childFDs: dict[int, int | str] = {0: "w", 1: 1, 2: 2, STATUS_FD: "r"}
        for fd, port in zip(listenFDs, self._ports, strict=True):
            childFDs[fd] = port.fileno()  # type: ignore[attr-defined]
        argv = list(self._command(index))
        worker = _WorkerProtocol(self._supervisor, index, self._metricsDirectory)
        process = self._reactor.spawnProcess(
            worker,
            argv[0],
            argv,
            # Each worker counts its metrics in the run's directory, from its
            # first import on (prometheus_client's multiprocess mode).
            env={**os.environ, WORKER_ENV: "1", MULTIPROC_ENV: self._metricsDirectory},
            childFDs=childFDs,
        )
        worker.pid = process.pid
        process.writeToChild(0, handoff.toJSON())
        process.closeChildFD(0)
        return process

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # No new connection waits in a queue nobody will read.
        ports, self._ports = self._ports, []
        for port in ports:
            await maybeDeferred(port.stopListening)
        if self._supervisor is not None:
            timeout = self.config.shutdownTimeout + CLEANUP_TIMEOUT + STOP_MARGIN
            await self._supervisor.stop(timeout)
        await self._inner.stopService()
        if self._metricsDirectory is not None:
            shutil.rmtree(self._metricsDirectory, ignore_errors=True)
            self._metricsDirectory = None


#: Under the data directory, the workers' scratch directory of the run.
RUN_DIRECTORY = "run"


def _runDirectory(config: StorageConfig) -> str:
    """
    A scratch directory for this run's workers, empty: under the data
    directory, whose lock the parent holds (what is there is a dead run's),
    or a new temporary one for a node that keeps nothing on disk.
    """
    if config.stateless:
        return tempfile.mkdtemp(prefix="morpheo-storage-run-")
    path = os.path.join(config.dataDir, RUN_DIRECTORY)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    return path


class _Holder(protocol.Factory):
    """What the parent's listeners would serve: nothing, they never accept."""

    noisy = False


class _Reported(Exception):
    """A start-up failure already said on stderr."""


def workerCommand(
    pluginArguments: Sequence[str], serverOptions: Any, executable: str
) -> Callable[[int], list[str]]:
    """
    Worker C{i}'s command line: twistd in the foreground, without a pid
    file, logging where the parent does (its stdout, or beside its log
    file, C{NAME.worker-I}), with the parent's plugin options.
    """
    options = serverOptions or {}
    logfile = options.get("logfile") or ""
    if not logfile and not options.get("nodaemon"):
        logfile = "twistd.log"
    base = os.path.abspath(logfile) if logfile and logfile != "-" else None

    def command(index: int) -> list[str]:
        where = f"{base}.worker-{index}" if base else "-"
        return [
            executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            f"--logfile={where}",
            "morpheo-storage",
            *pluginArguments,
        ]

    return command


__all__ = [
    "FIRST_DELAY",
    "MAX_DELAY",
    "STABLE_AFTER",
    "ParentWatch",
    "Supervisor",
    "WorkerFailed",
    "WorkerState",
    "WorkersService",
    "parseWorkers",
    "workerCommand",
]
