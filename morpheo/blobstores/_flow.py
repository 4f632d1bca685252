# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Flow control shared by the blob writers: a gate that keeps the producer
feeding a writer paused while anything holds it, and byte counts with high
and low water marks (a queue, a hash not computed yet) that hold it.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProducer, IPushProducer

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1 * 1024 * 1024


class ProducerGate:
    """
    The consumer half of a writer: holds the registered producer and keeps
    it paused while something holds the gate (each L{Backlog} over its high
    water mark, a consumer downstream that paused us), resuming it once
    nothing does.
    """

    def __init__(self) -> None:
        self.producer: IPushProducer | None = None
        #: What holds the gate; None once released: nothing holds it again.
        self._holds: set[object] | None = set()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming or not IPushProducer.providedBy(producer):
            raise ValueError("blob writers take push producers only")
        if self.producer is not None:
            raise RuntimeError(f"{self.producer!r} is already registered")
        self.producer = producer
        if self._holds:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def hold(self, reason: object) -> None:
        if self._holds is None or reason in self._holds:
            return
        self._holds.add(reason)
        if len(self._holds) == 1 and self.producer is not None:
            self.producer.pauseProducing()

    def letGo(self, reason: object) -> None:
        if self._holds is None or reason not in self._holds:
            return
        self._holds.remove(reason)
        if not self._holds and self.producer is not None:
            self.producer.resumeProducing()

    def release(self) -> None:
        """Resume the producer whatever holds it, for good (after a
        failure, so that the next write can report it)."""
        held, self._holds = self._holds, None
        if held and self.producer is not None:
            self.producer.resumeProducing()


class Backlog:
    """
    Bytes held somewhere, holding C{gate} from above C{high} until back to
    C{low}.

    Pausing is not instant (the transport may deliver what it has already
    read), so a backlog is bounded by C{high} plus one read, not by C{high}.
    """

    def __init__(self, gate: ProducerGate, high: int = HIGH_WATER, low: int = LOW_WATER) -> None:
        self.high = high
        self.low = low
        self.level = 0
        self._gate = gate

    def grew(self, n: int) -> None:
        self.level += n
        if self.level > self.high:
            self._gate.hold(self)

    def shrank(self, n: int) -> None:
        self.level -= n
        if self.level <= self.low:
            self._gate.letGo(self)
