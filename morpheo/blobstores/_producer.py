# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
The producers that copy a blob into the web layer's consumer: what they all
do the same way (register, end once, stop when their C{done} is cancelled,
follow the consumer's pauses), and the one that reads a blob in a thread,
one block ahead, its blocks sized by its share of the store's memory budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .._errors import BlobStoreError
from ._flow import Share

#: The block one download alone reads at a time.  With others running, a
#: block is a quarter of its share of the budget: a download holds the
#: block read ahead, the one written last and the transport's own buffer
#: (up to its C{bufferSize} more, sent before it asks for more).
BLOCK = 1024 * 1024


@implementer(IPushProducer)
class BlobProducer:
    """
    Writes a blob's bytes into C{consumer} while it is not paused; C{done}
    fires once at the end (cancelling it stops the transfer), after the
    producer has unregistered.  Subclasses move the bytes (C{_go}, called
    when they may flow), halt their source (C{_halt}) and give it up
    (C{_giveUp}).
    """

    def __init__(self, consumer: IConsumer) -> None:
        self.consumer = consumer
        self.paused = False
        self.done: Deferred[None] = Deferred(lambda d: self.stopProducing())

    def beginProducing(self) -> Deferred[None]:
        self.consumer.registerProducer(self, True)
        self._go()
        return self.done

    def pauseProducing(self) -> None:
        self.paused = True
        self._halt()

    def resumeProducing(self) -> None:
        self.paused = False
        self._go()

    def stopProducing(self) -> None:
        if not self.done.called:
            self._giveUp()
            self._end(Failure(CancelledError("the transfer was stopped")))

    def _end(self, reason: Failure | None = None) -> None:
        """The transfer is over, failed if C{reason} says why; once only."""
        if self.done.called:
            return
        self.consumer.unregisterProducer()
        if reason is None:
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def _go(self) -> None:
        """Bytes may flow (again)."""

    def _halt(self) -> None:
        """Bytes must stop flowing for now."""

    def _giveUp(self) -> None:
        """Bytes must stop flowing for good."""
        self._halt()


class ThreadedReadProducer(BlobProducer):
    """
    Reads C{file} through C{inThread} (in a thread pool) until C{length}
    bytes have been written to the consumer, then closes it.  While the
    consumer is paused the next block is read but not written, so memory
    stays at about two blocks besides the consumer's buffer.  With a
    C{share} of a memory budget, blocks are a quarter of it (at most
    C{block}), and the share is left at the end.  C{first}, if given, is
    the first block, read already: the file is then read on from after it,
    or not at all when it is the whole C{length} (C{file} may then be
    L{None}, closed already).
    """

    def __init__(
        self,
        file: IO[bytes] | None,
        length: int,
        consumer: IConsumer,
        inThread: Callable[..., Deferred[Any]],
        block: int = BLOCK,
        share: Share | None = None,
        first: bytes | None = None,
    ) -> None:
        super().__init__(consumer)
        self._share = share
        self._file = file
        self._remaining = length
        self._inThread = inThread
        self._block = block
        self._pendingBlock: bytes | None = None
        if first:
            self._remaining -= len(first)
            self._pendingBlock = first
        #: The read in flight, if any.
        self._reading: Deferred[bytes] | None = None

    def _go(self) -> None:
        if self.done.called:
            return
        if self._pendingBlock is not None and not self.paused:
            block, self._pendingBlock = self._pendingBlock, None
            self.consumer.write(block)
        if self._remaining == 0 and self._pendingBlock is None:
            self._end()
            return
        if self._remaining and self._pendingBlock is None and self._reading is None:
            assert self._file is not None, "the file was closed before its last block"
            size = self._block if self._share is None else self._share.size(4 * self._block) // 4
            want = min(size, self._remaining)
            self._reading = self._inThread(self._file.read, want)
            self._reading.addCallbacks(self._gotBlock, self._failed)

    def _gotBlock(self, data: bytes) -> None:
        self._reading = None
        if self.done.called:
            self._closeFile()
        elif not data:
            self._end(Failure(BlobStoreError("the blob ended before its length")))
        else:
            self._remaining -= len(data)
            self._pendingBlock = data
            self._go()

    def _failed(self, reason: Failure) -> None:
        self._reading = None
        if self.done.called:
            self._closeFile()
        else:
            self._end(reason)

    def _end(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        self._pendingBlock = None
        if self._share is not None:
            self._share.leave()
        if self._reading is None:
            # Otherwise the read in flight closes it when it returns.
            self._closeFile()
        super()._end(reason)

    def _closeFile(self) -> None:
        if self._file is not None:
            self._inThread(self._file.close).addErrback(lambda f: None)
