"""
The remote stores' appender (L{morpheo.blobstores._resumable.UnitAppender})
on its own, over a store in memory whose requests take their bodies as a
transport would: pieces sent first, units of a fixed length, the rest
staged at the close (or sent, at the blob's end), the producer paused while
a unit and its high water mark wait, bytes the store has already skipped,
a request dropped, a failing store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from morpheo._errors import BlobStoreError, SizeMismatch, TooLarge
from morpheo._interfaces import IAppender
from morpheo._types import Appended
from morpheo.blobstores._bodies import StreamBody
from morpheo.blobstores._flow import MemoryBudget
from morpheo.blobstores._resumable import ForeignState, UnitAppender, loadState, stagedName

UNIT = 1000


@implementer(IConsumer)
class Collector:
    """What a request's body was written to: the transport, in short."""

    def __init__(self) -> None:
        self.data = bytearray()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data += data


class Bucket:
    """The store: the units it took, the pieces it holds; requests answered
    when C{answer} is called (or at once), or failed once C{broken}."""

    def __init__(self) -> None:
        self.units: list[bytes] = []
        self.pieces: dict[str, bytes] = {}
        self.waiting: list[Callable[[], None]] = []
        self.atOnce = True
        self.broken = False

    def send(self, length: int, body: StreamBody, keep: Callable[[bytes], None]) -> Deferred[Any]:
        if self.broken:
            return fail(BlobStoreError("the store is down"))
        collector = Collector()
        done: Deferred[Any] = Deferred()

        def written(_: object) -> None:
            def answer() -> None:
                keep(bytes(collector.data))
                done.callback(len(collector.data))

            if self.atOnce:
                answer()
            else:
                self.waiting.append(answer)

        body.startProducing(collector).addCallback(written)
        return done

    def answer(self) -> None:
        waiting, self.waiting = self.waiting, []
        for answer in waiting:
            answer()

    def read(self, name: str, consumer: IConsumer, length: int) -> Deferred[None]:
        data = self.pieces[name]
        assert len(data) == length
        consumer.registerProducer(Unpaused(), True)
        for i in range(0, len(data), 300):
            consumer.write(data[i : i + 300])
        consumer.unregisterProducer()
        return succeed(None)


@implementer(IPushProducer)
class Unpaused:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Appender(UnitAppender[int]):
    """Units and pieces into a L{Bucket}; the state is the pieces' names."""

    def __init__(
        self,
        bucket: Bucket,
        offset: int = 0,
        end: int | None = None,
        pieces: list[tuple[str, int]] | None = None,
        prelude: Deferred[int] | None = None,
        tail: bool = True,
        strict: bool = False,
    ) -> None:
        self.bucket = bucket
        self.sendsTail = tail
        self.strict = strict
        super().__init__(
            "data/key",
            offset,
            end,
            UNIT,
            pieces or [],
            10 * UNIT,
            MemoryBudget().join(),
            400,
            bucket.read,
            prelude,
        )

    def _sendUnit(self, length: int, body: StreamBody) -> Deferred[int]:
        return self.bucket.send(length, body, self.bucket.units.append)

    def _tailUnit(self, rest: int, final: bool) -> int:
        return rest if final and self.sendsTail else 0

    def _stagedName(self, offset: int) -> str:
        return stagedName(self.key, "upload", offset)

    def _stage(self, name: str, length: int, body: StreamBody) -> Deferred[Any]:
        def keep(data: bytes) -> None:
            self.bucket.pieces[name] = data

        return self.bucket.send(length, body, keep)

    def _state(self, staged: tuple[str, int] | None) -> Appended:
        held = self.offset + self._received
        return Appended(json.dumps({"staged": staged}), held)

    def _dropped(self) -> Appended:
        return Appended("before", self.offset)


@implementer(IPushProducer)
class Producer:
    """A request body's producer: counts its pauses."""

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


def now(d: Deferred[Any]) -> Any:
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "not done at once"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def test_provides_the_interface() -> None:
    verifyObject(IAppender, Appender(Bucket()))


def test_units_after_the_pieces_and_the_rest_staged() -> None:
    bucket = Bucket()
    bucket.pieces["old"] = b"p" * 700
    appender = Appender(bucket, offset=700, pieces=[("old", 700)])
    appender.write(b"a" * 1500)
    appended = now(appender.close())
    assert bucket.units == [b"p" * 700 + b"a" * 300, b"a" * 1000]
    name, length = json.loads(appended.state)["staged"]
    assert (bucket.pieces[name], length, appended.offset) == (b"a" * 200, 200, 2200)


def test_at_the_end_the_rest_is_the_last_unit() -> None:
    bucket = Bucket()
    appender = Appender(bucket, end=2500)
    appender.write(b"x" * 2500)
    appended = now(appender.close())
    assert [len(u) for u in bucket.units] == [1000, 1000, 500]
    assert json.loads(appended.state)["staged"] is None


def test_strict_holds_a_unit_until_a_byte_beyond_it() -> None:
    bucket = Bucket()
    appender = Appender(bucket, strict=True, tail=False)
    appender.write(b"x" * 1000)
    assert bucket.units == []
    appender.write(b"y")
    assert bucket.units == [b"x" * 1000]
    now(appender.close())


def test_the_producer_waits_while_a_unit_and_its_high_water_mark_are_held() -> None:
    bucket = Bucket()
    bucket.atOnce = False
    appender = Appender(bucket)
    producer = Producer()
    appender.registerProducer(producer, True)
    written = 0
    while not producer.paused and written < 10_000:
        appender.write(b"z" * 100)
        written += 100
    # A unit on its way (written out, not answered), more than the next
    # one and its high water mark waiting.
    assert producer.paused and producer.pauses == 1
    assert len(bucket.waiting) == 1 and written == UNIT + UNIT + 400 + 100
    bucket.answer()
    assert not producer.paused
    appender.unregisterProducer()
    closed = appender.close()
    while not closed.called:
        bucket.answer()
    assert sum(map(len, bucket.units)) + len(next(iter(bucket.pieces.values()))) == written


def test_what_the_store_has_already_is_skipped() -> None:
    bucket = Bucket()
    bucket.pieces["old"] = b"p" * 300
    prelude: Deferred[int] = Deferred()
    appender = Appender(bucket, offset=300, pieces=[("old", 300)], prelude=prelude)
    appender.write(b"q" * 1000)
    assert bucket.units == []
    prelude.callback(500)  # the pieces and 200 of the request's bytes
    now(appender.close())
    assert bucket.units == [] and list(bucket.pieces.values())[-1] == b"q" * 800


def test_a_dropped_request_gives_the_state_from_before() -> None:
    bucket = Bucket()
    appender = Appender(bucket, offset=5)
    appender.write(b"x" * 1500)
    assert now(appender.close(keep=False)) == Appended("before", 5)
    assert list(bucket.pieces) == []


def test_past_the_end_and_past_the_maximum() -> None:
    appender = Appender(Bucket(), end=10)
    with pytest.raises(SizeMismatch):
        appender.write(b"x" * 11)
    appender = Appender(Bucket())
    with pytest.raises(TooLarge):
        appender.write(b"x" * (10 * UNIT + 1))


def test_a_failing_store_fails_the_writes_and_the_close() -> None:
    bucket = Bucket()
    bucket.broken = True
    appender = Appender(bucket)
    appender.write(b"x" * 1000)
    with pytest.raises(BlobStoreError):
        appender.write(b"x")
    with pytest.raises(BlobStoreError):
        now(appender.close())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"store": "s3", "endpoint": "http://elsewhere", "key": "data/key"}',
        '{"store": "gcs", "endpoint": "http://here", "key": "data/key"}',
        '{"store": "s3", "endpoint": "http://here", "key": "data/other"}',
    ],
)
def test_a_state_not_its_own_is_refused(text: str) -> None:
    with pytest.raises(ForeignState):
        loadState(text, "s3", "http://here", "data/key")
    good = '{"store": "s3", "endpoint": "http://here", "key": "data/key"}'
    assert loadState(good, "s3", "http://here", "data/key")["key"] == "data/key"
