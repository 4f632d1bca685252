# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Flow control shared by the blob writers: a byte count with high and low
water marks that pauses and resumes the producer feeding the writer.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProducer, IPushProducer

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1 * 1024 * 1024


class ProducerGate:
    """
    The consumer half of a writer: holds the registered producer and pauses
    it while more than C{high} bytes are buffered, resuming it below C{low}.

    Pausing is not instant (the transport may deliver what it has already
    read), so the buffer is bounded by C{high} plus one read, not by C{high}.
    """

    def __init__(self, high: int = HIGH_WATER, low: int = LOW_WATER) -> None:
        self.high = high
        self.low = low
        self.buffered = 0
        self.producer: IPushProducer | None = None
        self._paused = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming or not IPushProducer.providedBy(producer):
            raise ValueError("blob writers take push producers only")
        if self.producer is not None:
            raise RuntimeError(f"{self.producer!r} is already registered")
        self.producer = producer
        self._paused = False
        self._update()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._paused = False

    def grew(self, n: int) -> None:
        self.buffered += n
        self._update()

    def shrank(self, n: int) -> None:
        self.buffered -= n
        self._update()

    def release(self) -> None:
        """Resume the producer whatever is buffered (after a failure, so
        that the next write can report it)."""
        self.high = self.low = 2**63
        self._update()

    def _update(self) -> None:
        if self.producer is None:
            return
        if not self._paused and self.buffered > self.high:
            self._paused = True
            self.producer.pauseProducing()
        elif self._paused and self.buffered <= self.low:
            self._paused = False
            self.producer.resumeProducing()
