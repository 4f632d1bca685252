# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
A push producer that reads a blob in a thread and writes it to a consumer,
one block ahead, honouring the consumer's pauses.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._types import BlobStoreError

BLOCK = 1024 * 1024


@implementer(IPushProducer)
class ThreadedReadProducer:
    """
    Calls C{read(n)} in C{pool} until C{length} bytes have been written to
    the consumer, then C{close()}.  While the consumer is paused the next
    block is read but not written, so memory stays at about two blocks.
    """

    def __init__(
        self,
        read: Callable[[int], bytes],
        close: Callable[[], None],
        length: int,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        block: int = BLOCK,
    ) -> None:
        self._read = read
        self._close = close
        self._remaining = length
        self._reactor = reactor
        self._pool = pool
        self._block = block
        self._paused = False
        self._stopped = False
        self._consumer: IConsumer | None = None
        self._pendingBlock: bytes | None = None
        self._reading = False
        self._done: Deferred[None] = Deferred(lambda d: self.stopProducing())

    def beginProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._step()
        return self._done

    def _step(self) -> None:
        if self._stopped:
            return
        if self._pendingBlock is not None and not self._paused:
            block, self._pendingBlock = self._pendingBlock, None
            assert self._consumer is not None
            self._consumer.write(block)
        if self._remaining == 0 and self._pendingBlock is None:
            self._finish(None)
            return
        if self._remaining and self._pendingBlock is None and not self._reading:
            self._reading = True
            want = min(self._block, self._remaining)
            d = deferToThreadPool(self._reactor, self._pool, self._read, want)
            d.addCallbacks(self._gotBlock, self._failed)

    def _gotBlock(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._closeFile()
            return
        if not data:
            self._failed(Failure(BlobStoreError("the blob ended before its length")))
            return
        self._remaining -= len(data)
        self._pendingBlock = data
        self._step()

    def _failed(self, reason: Failure) -> None:
        self._reading = False
        if self._stopped:
            self._closeFile()
            return
        self._finish(reason)

    def _finish(self, result: Failure | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._pendingBlock = None
        if self._consumer is not None:
            self._consumer.unregisterProducer()
        if not self._reading:
            # Otherwise the read in flight closes it when it returns.
            self._closeFile()
        if result is None:
            self._done.callback(None)
        else:
            self._done.errback(result)

    def _closeFile(self) -> None:
        deferToThreadPool(self._reactor, self._pool, self._close).addErrback(lambda f: None)

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._step()

    def stopProducing(self) -> None:
        if not self._stopped:
            self._finish(Failure(CancelledError("the transfer was stopped")))
