"""
The memory budget that a blob store's transfers share: shares divided
evenly among the transfers running, never below the least nor above what a
transfer asks; writers that pause their producer above their share and
resume it below, the local one included (with its thread work held back,
so that its queue can be seen); downloads whose blocks follow their share;
and every transfer giving its share back however it ends, through the
routes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from morpheo.blobstores import LocalBlobStore, MemoryBlobStore, MemoryBudget
from morpheo.blobstores._local import keyPath
from morpheo.blobstores._producer import BLOCK

from .harness import FORM_TYPE, FakeReactor, ImmediatePool, Service, fieldsFor, form, newUUID

KiB = 1024
MiB = 1024 * KiB


@implementer(IPushProducer)
class Producer:
    """A request body as a writer sees it: paused or not, and how often."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class HeldPool:
    """A thread pool whose work waits until the test L{run}s it."""

    def __init__(self) -> None:
        self._work: list[tuple[Callable[[bool, Any], None], Callable[..., Any], Any, Any]] = []

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        self._work.append((onResult, f, a, kw))

    def run(self) -> None:
        """Run what is queued, and what that queues, until nothing is."""
        while self._work:
            onResult, f, a, kw = self._work.pop(0)
            try:
                result = f(*a, **kw)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)


@implementer(IConsumer)
class Consumer:
    """A download's consumer: the size of every write."""

    def __init__(self) -> None:
        self.writes: list[int] = []
        self.producer: IProducer | None = None

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))


def result(d: Deferred[Any]) -> Any:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


# The budget itself


def test_theBudgetIsSharedEvenlyAmongTheTransfersRunning() -> None:
    budget = MemoryBudget(total=1 * MiB, least=64 * KiB)
    first = budget.join()
    assert first.size(4 * MiB) == 1 * MiB
    assert first.size(256 * KiB) == 256 * KiB  # never more than it asks
    others = [budget.join() for _ in range(3)]
    assert budget.active == 4
    assert first.size(4 * MiB) == 256 * KiB
    many = [budget.join() for _ in range(60)]
    assert first.size(4 * MiB) == 64 * KiB  # 16 KiB each would be below the least
    for share in others + many:
        share.leave()
    assert (budget.active, first.size(4 * MiB)) == (1, 1 * MiB)


def test_aShareIsGivenBackOnce() -> None:
    budget = MemoryBudget()
    share = budget.join()
    share.leave()
    share.leave()
    assert budget.active == 0


@pytest.mark.parametrize("total, least", [(64 * KiB, 128 * KiB), (1 * MiB, 0)])
def test_aBudgetThatCannotGiveItsLeastShareIsRefused(total: int, least: int) -> None:
    with pytest.raises(ValueError):
        MemoryBudget(total=total, least=least)


# Writers


def test_aWriterPausesItsProducerAboveItsShareAndResumesBelow() -> None:
    clock = Clock()
    budget = MemoryBudget(total=256 * KiB, least=16 * KiB)
    store = MemoryBlobStore(clock, highWater=4 * MiB, budget=budget)
    writer = store.writer("data/one", 1 * MiB)
    other = store.writer("data/two", 1 * MiB)
    producer = Producer()
    writer.registerProducer(producer, True)
    # Two transfers: 128 KiB each, far below the writer's own 4 MiB mark.
    writer.write(b"x" * (100 * KiB))
    assert not producer.paused
    writer.write(b"x" * (40 * KiB))
    assert producer.paused
    clock.advance(0)  # the store drains what was written
    assert not producer.paused
    # Alone again, the writer gets the whole budget.
    result(other.abort())
    assert budget.active == 1
    writer.write(b"x" * (200 * KiB))
    assert not producer.paused
    writer.write(b"x" * (100 * KiB))
    assert producer.paused
    clock.advance(0)
    writer.write(b"x" * (1 * MiB - 440 * KiB))
    clock.advance(0)
    assert result(writer.finish()).size == 1 * MiB
    assert budget.active == 0


def test_theLocalWriterQueuesNoMoreThanItsShare(tmp_path: Path) -> None:
    """
    With its thread work held back, the local writer pauses the body once
    its queue is over its share (64 KiB of a 256 KiB budget among four
    transfers, not its own 6 MiB), and resumes it once the work has run;
    the hash, computed in batches that follow the share, is still right.
    """
    pool = HeldPool()
    budget = MemoryBudget(total=256 * KiB, least=16 * KiB)
    store = LocalBlobStore(str(tmp_path), FakeReactor(), pool, budget=budget)  # type: ignore[arg-type]
    others = [budget.join() for _ in range(3)]
    data = os.urandom(1 * MiB)
    writer = store.writer("data/local", len(data))
    producer = Producer()
    writer.registerProducer(producer, True)
    piece = 16 * KiB
    queued = 0
    for start in range(0, len(data), piece):
        assert not producer.paused
        writer.write(data[start : start + piece])
        queued += piece
        if producer.paused:
            assert queued <= 64 * KiB + piece
            pool.run()
            queued = 0
    assert producer.pauses >= len(data) // (64 * KiB + piece)
    finished = writer.finish()
    pool.run()
    assert result(finished).sha256 == hashlib.sha256(data).hexdigest()
    assert budget.active == len(others)
    with open(keyPath(str(tmp_path), "data/local"), "rb") as f:
        assert f.read() == data


# Downloads


def storedFile(root: Path, key: str, size: int) -> bytes:
    data = os.urandom(size)
    path = keyPath(str(root), key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def test_aDownloadReadsBlocksOfAQuarterOfItsShare(tmp_path: Path) -> None:
    budget = MemoryBudget(total=1 * MiB, least=64 * KiB)
    pool = ImmediatePool()
    store = LocalBlobStore(str(tmp_path), FakeReactor(), pool, budget=budget)  # type: ignore[arg-type]
    storedFile(tmp_path, "data/down", 700 * KiB)
    others = [budget.join() for _ in range(3)]
    consumer = Consumer()
    result(store.produce("data/down", consumer))
    assert consumer.writes == [64 * KiB] * 10 + [60 * KiB]
    assert budget.active == len(others)


def test_aDownloadAloneReadsItsWholeBlocks(tmp_path: Path) -> None:
    store = LocalBlobStore(str(tmp_path), FakeReactor(), ImmediatePool())  # type: ignore[arg-type]
    storedFile(tmp_path, "data/alone", 3 * BLOCK)
    consumer = Consumer()
    result(store.produce("data/alone", consumer))
    assert consumer.writes == [BLOCK] * 3
    assert store.budget.active == 0


# Through the routes: every way a transfer ends gives its share back


def test_uploadsGiveTheirSharesBackHoweverTheyEnd(service: Service) -> None:
    budget = service.budget
    assert service.upload("data", b"x" * 1000).code == 201
    assert budget.active == 0
    before = service.snapshot()
    first = service.startUpload("data", newUUID())
    second = service.startUpload("algo", newUUID())
    assert budget.active == 2
    first.close()
    assert budget.active == 1
    service.blobs.down = True
    second.send(b"more of the blob")
    second.close()
    service.blobs.down = False
    assert budget.active == 0
    # A stated digest that does not match, and a body longer than its size.
    md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    body = form(fieldsFor("data", b"blob"), b"blob", **{"Content-MD5": md5})
    reply = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 400
    body = form(fieldsFor("data", b"blob", size="3"), b"blob")
    assert service.request("POST", "/data", body, {"Content-Type": FORM_TYPE}).code == 400
    assert budget.active == 0
    service.assertNothingLeft(before)
