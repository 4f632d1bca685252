# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Flow control shared by the blob writers and readers: a gate that keeps the
producer feeding a writer paused while anything holds it, byte counts with
high and low water marks (a queue, a hash not computed yet) that hold it,
and the memory budget that all of a store's transfers share, so that many
transfers at once each hold less.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProducer, IPushProducer

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1 * 1024 * 1024

#: The bytes that all the transfers of one blob store (uploads and
#: downloads) may hold in memory at once, shared evenly among those running.
#: One transfer alone keeps its own, larger, marks (they make it fast);
#: 64 at once get 512 KiB each, so that the service stays near 150 MB of
#: resident memory under that load instead of growing with every transfer.
TRANSFER_BUDGET = 32 * 1024 * 1024

#: The least share of the budget a transfer gets, however many run: below
#: it every read of the socket would pause the transfer, and the thread
#: hops per megabyte would cost more than the bytes.  Beyond
#: C{TRANSFER_BUDGET // LEAST_SHARE} transfers (256) the total grows by this
#: much for each.
LEAST_SHARE = 128 * 1024


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


class MemoryBudget:
    """
    The bytes a store's transfers may hold in memory, C{total} in all,
    shared evenly: each running transfer L{join}s and gets a L{Share},
    whose size is C{total} divided by the transfers running now (at least
    C{least}, at most what the transfer asks for).  Shares follow the
    count as transfers come and go: a transfer above its new share is
    paused at its next write until it has drained back under it.
    """

    def __init__(self, total: int = TRANSFER_BUDGET, least: int = LEAST_SHARE) -> None:
        if not 0 < least <= total:
            raise ValueError(f"a budget of {total} bytes cannot give shares of {least}")
        self.total = total
        self.least = least
        #: How many transfers hold a share now.
        self.active = 0

    def join(self) -> Share:
        """A share for a transfer that starts; it L{leaves <Share.leave>} at its end."""
        self.active += 1
        return Share(self)

    def size(self, most: int) -> int:
        """The share of one transfer now, for one that would take C{most}."""
        return min(most, max(self.least, self.total // max(1, self.active)))


class Share:
    """One transfer's part of a L{MemoryBudget}, until it L{leave}s."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.left = False

    def size(self, most: int) -> int:
        """What this transfer may hold now, if it would hold C{most}."""
        return self.budget.size(most)

    def leave(self) -> None:
        """The transfer is over: the others share what it held (once only)."""
        if not self.left:
            self.left = True
            self.budget.active -= 1


class Backlog:
    """
    Bytes held somewhere, holding C{gate} from above C{high} until back to
    C{low}.  With a C{share} of a budget, both marks shrink in proportion
    while the share is smaller than C{high}.

    Pausing is not instant (the transport may deliver what it has already
    read), so a backlog is bounded by C{high} plus one read, not by C{high}.
    """

    def __init__(
        self,
        gate: ProducerGate,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
        share: Share | None = None,
    ) -> None:
        self._high = high
        self._low = low
        self._share = share
        self.level = 0
        self._gate = gate

    @property
    def high(self) -> int:
        return self._high if self._share is None else self._share.size(self._high)

    @property
    def low(self) -> int:
        return self._low * self.high // self._high

    def grew(self, n: int) -> None:
        self.level += n
        if self.level > self.high:
            self._gate.hold(self)

    def shrank(self, n: int) -> None:
        self.level -= n
        if self.level <= self.low:
            self._gate.letGo(self)
