# -*- test-case-name: tests.unit.test_unit_appender,tests.integration.test_resumable_contract -*-
"""
What the remote stores' resumable writes (L{IResumableBlobStore}) share:
the appender that cuts one request's bytes into the fixed units a store
takes (S3's parts, a GCS session's chunks), after the pieces the write
staged before, and stages what is left at its close; the state's JSON; the
names of the staged pieces.

A unit's body needs its length before its first byte, and a request cut
mid-unit must lose nothing: a unit is sent once all its bytes are in, so
an appender holds at most one unit and its high water mark above it.  The
pieces staged by earlier requests are streamed back from the store into
the same buffer, paused while it is full, ahead of the request's bytes.

A staged piece is an object whose name is not of the service's blob shape
(L{morpheo._kinds.isBlobKey}), under a prefix made of the key and a token
of the write (L{stagedPrefix}), so that the sweep never lists it and
L{IResumableBlobStore.cancel} finds them all.  A piece a new state no
longer holds is named in the state as I{stale} and deleted by the next
append, which proves the new state was kept: if it was not, the state from
before, and its pieces, still work.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._errors import BlobStoreError, SizeMismatch, TooLarge
from .._interfaces import IAppender
from .._types import Appended
from ._bodies import StreamBody
from ._flow import HIGH_WATER, LOW_WATER, Backlog, ProducerGate, Share
from ._http import asStoreError

log = Logger()

R = TypeVar("R")

#: What a staged piece's name has after the key: never of the blob shape.
STAGED_MARK = "~resumable/"


def writeToken(handle: str) -> str:
    """A short name for one write (from its upload id or session URL)."""
    return hashlib.sha256(handle.encode()).hexdigest()[:20]


def stagedPrefix(key: str, handle: str) -> str:
    """Where the pieces staged for the write C{handle} to C{key} are."""
    return f"{key}{STAGED_MARK}{writeToken(handle)}/"


def stagedName(key: str, handle: str, offset: int) -> str:
    """A new staged piece's name: where it starts in the blob, and a nonce
    (a request repeated from the same offset must not overwrite a piece an
    older state still holds)."""
    return f"{stagedPrefix(key, handle)}{offset:015d}-{uuid.uuid4().hex[:12]}"


class ForeignState(BlobStoreError):
    """A state that is not one of this store's writes to that key."""


def loadState(text: str, kind: str, endpoint: str, key: str) -> dict[str, Any]:
    """
    The JSON of a state, if it is one of this store's (C{kind} at
    C{endpoint}, which names the bucket) for C{key}: read back from the
    database, it is data, and another store's or key's is refused.
    """
    try:
        state = json.loads(text)
    except (TypeError, ValueError):
        raise ForeignState(f"the state of the write to {key} is not JSON") from None
    if not (
        isinstance(state, dict)
        and state.get("store") == kind
        and state.get("endpoint") == endpoint
        and state.get("key") == key
    ):
        raise ForeignState(f"the state of the write to {key} is not one of {kind} {endpoint}")
    return state


def dumpState(state: dict[str, Any]) -> str:
    return json.dumps(state, separators=(",", ":"), sort_keys=True)


@implementer(IConsumer)
class _PieceSink:
    """Takes a staged piece streamed back from the store into an appender."""

    def __init__(self, appender: UnitAppender[Any]) -> None:
        self._appender = appender
        self.producer: IPushProducer | None = None
        self.paused = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer  # type: ignore[assignment]
        self._appender._advance()

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self._appender._take(data)

    def pause(self) -> None:
        if not self.paused and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def resume(self) -> None:
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()


@implementer(IAppender)
class UnitAppender(Generic[R]):
    """
    One request's bytes appended to a write that holds C{offset} bytes, of
    a blob C{end} bytes long if that is known: the bytes of the staged
    C{pieces} first (name, length; C{read} streams C{length} bytes of one
    into a consumer, or fails), then the request's, cut into units of
    C{unit} bytes sent one after the other (C{_sendUnit}), and at the close
    the rest: the last unit when the blob's end is reached and the store
    takes it now (C{_tailUnit}), staged otherwise (C{_stage}).  The first
    bytes C{prelude} fires with, if given, are dropped: the store has them
    already.  With C{strict}, a unit goes out only once a byte beyond it is
    in: the store must not be sent the blob's last byte before the end.

    Subclasses say how a unit and a piece are sent and what the new state
    is (C{_state}).
    """

    def __init__(
        self,
        key: str,
        offset: int,
        end: int | None,
        unit: int,
        pieces: list[tuple[str, int]],
        maximum: int,
        share: Share,
        highWater: int | None,
        read: Callable[[str, IConsumer, int], Deferred[None]],
        prelude: Deferred[int] | None = None,
    ) -> None:
        high, low = (HIGH_WATER, LOW_WATER) if highWater is None else (highWater, highWater // 4)
        self.key = key
        self.offset = offset
        self.end = end
        self.unit = unit
        self.maximum = maximum
        self._share = share
        self._gate = ProducerGate()
        # A whole unit may wait in the buffer, whatever the share.
        self._high = high + unit
        self._buffer = Backlog(self._gate, self._high, low + unit)
        self._low = low + unit
        self._pending: deque[bytes] = deque()
        #: What the request wrote while the pieces were still coming.
        self._early: deque[bytes] = deque()
        self._earlyBytes = 0
        self._pieces = deque(pieces)
        self._read = read
        self._sink = _PieceSink(self)
        self._loading: Deferred[Any] | None = None
        self._skip = 0
        self._received = 0
        #: What this appender sent, in order: (length, result).
        self.units: list[tuple[int, R]] = []
        self._body: StreamBody | None = None
        self._inflight: Deferred[Any] | None = None
        self._failure: Failure | None = None
        self._closed = False
        self._moving = False
        self._waiters: list[Deferred[None]] = []
        if prelude is not None:
            # Asked first: how many bytes of what follows the store has already.
            self._gate.hold(self._sink)
            self._loading = prelude

            def skip(count: int) -> None:
                self._skip = count
                self._loadNext()

            prelude.addCallbacks(skip, self._fail)
        elif self._pieces:
            self._gate.hold(self._sink)
            self._loadNext()

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._gate.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write after close()")
        if self._failure is not None:
            self._failure.raiseException()
        if not data:
            return
        total = self.offset + self._received + len(data)
        if self.end is not None and total > self.end:
            raise SizeMismatch(self.end, total)
        if total > self.maximum:
            raise TooLarge(self.maximum)
        self._received += len(data)
        if self._pieces or self._loading is not None:
            self._early.append(data)
            self._earlyBytes += len(data)
            self._buffer.grew(len(data))
            return
        self._take(data)

    # IAppender

    def close(self, keep: bool = True) -> Deferred[Appended]:
        if self._closed:
            raise RuntimeError("close() called twice")
        self._closed = True
        d = Deferred.fromCoroutine(self._finish() if keep else self._drop())
        return d.addBoth(self._leave)

    def _leave(self, result: Any) -> Any:
        self._share.leave()
        return result

    # The flow

    def _loadNext(self) -> None:
        if not self._pieces:
            self._loading = None
            self._gate.letGo(self._sink)
            early, self._early = self._early, deque()
            self._earlyBytes = 0
            for data in early:
                self._buffer.shrank(len(data))
                self._take(data)
            self._advance()
            return
        name, length = self._pieces.popleft()
        self._loading = d = self._read(name, self._sink, length)
        d.addCallbacks(lambda _: self._loadNext(), self._fail)

    def _take(self, data: bytes) -> None:
        """Bytes of the combined stream, in order."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
            if not data:
                return
        self._pending.append(data)
        self._buffer.grew(len(data))
        if self._level > self._high:
            self._sink.pause()
        self._advance()

    @property
    def _level(self) -> int:
        return self._buffer.level - self._earlyBytes

    def _advance(self) -> None:
        if self._moving:
            return
        self._moving = True
        try:
            while self._step():
                pass
        finally:
            self._moving = False
        self._wake()

    def _step(self) -> bool:
        if self._failure is not None:
            return False
        body = self._body
        if body is not None:
            if body.remaining == 0:
                self._body = None
                return True
            if not (self._pending and body.writable):
                return False
            chunk = self._pending[0]
            if len(chunk) > body.remaining:
                self._pending[0] = chunk[body.remaining :]
                chunk = chunk[: body.remaining]
            else:
                self._pending.popleft()
            self._buffer.shrank(len(chunk))
            if self._level <= self._low:
                self._sink.resume()
            body.write(chunk)
            return True
        if self._inflight is not None:
            return False
        if self._unitReady():
            self._send(self.unit, self._sendUnit)
            return True
        return False

    #: Whether a unit waits for a byte beyond it (see the class docstring).
    strict = False

    def _unitReady(self) -> bool:
        return self._level > self.unit or (self._level == self.unit and not self.strict)

    def _send(self, length: int, sender: Callable[[int, StreamBody], Deferred[R]]) -> None:
        self._body = body = StreamBody(length, self._advance)
        self._inflight = d = sender(length, body)

        def sent(result: R) -> None:
            self._inflight = None
            self.units.append((length, result))
            self._advance()

        def failed(reason: Failure) -> None:
            self._inflight = None
            self._fail(reason)

        d.addCallbacks(sent, failed)

    def _fail(self, reason: Failure) -> None:
        if self._failure is None:
            self._failure = asStoreError(f"appending to {self.key}", reason)
            self._pending.clear()
            self._early.clear()
            self._earlyBytes = 0
            if self._inflight is not None:
                self._inflight.cancel()
            self._gate.release()
        self._wake()

    def _wake(self) -> None:
        """Let L{_idle}'s waiters look again (after the running move, if any)."""
        if self._moving:
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _idle(self) -> Deferred[None]:
        """Fires once nothing moves any more: the pieces are in, no unit is
        on its way and less than a unit waits (or it failed)."""
        busy = self._loading is not None or self._inflight is not None
        if self._failure is None and (busy or self._unitReady()):
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            return d.addCallback(lambda _: self._idle())
        return succeed(None)

    async def _finish(self) -> Appended:
        await self._idle()
        if self._failure is not None:
            self._failure.raiseException()
        rest = self._level
        total = self.offset + self._received
        final = self.end is not None and total == self.end
        tail = self._tailUnit(rest, final)
        if tail:
            self._send(tail, self._sendUnit)
            self._advance()
            await self._idle()
        staged: tuple[str, int] | None = None
        rest = self._level
        if rest and self._failure is None:
            name = self._stagedName(total - rest)
            self._send(rest, lambda length, body: self._stage(name, length, body))
            self._advance()
            await self._idle()
            staged = (name, rest)
        if self._failure is not None:
            self._failure.raiseException()
        if staged is not None:
            self.units.pop()
        return self._state(staged)

    async def _drop(self) -> Appended:
        self._fail(Failure(BlobStoreError("the request's bytes were dropped")))
        if self._loading is not None:
            self._loading.cancel()
        return self._dropped()

    # For subclasses

    def _sendUnit(self, length: int, body: StreamBody) -> Deferred[R]:
        raise NotImplementedError(f"{type(self).__name__} must say how a unit is sent")

    def _tailUnit(self, rest: int, final: bool) -> int:
        """How many of the C{rest} bytes left at the close go out as a unit now."""
        return 0

    def _stagedName(self, offset: int) -> str:
        raise NotImplementedError(f"{type(self).__name__} must name its staged pieces")

    def _stage(self, name: str, length: int, body: StreamBody) -> Deferred[Any]:
        raise NotImplementedError(f"{type(self).__name__} must say how a piece is staged")

    def _state(self, staged: tuple[str, int] | None) -> Appended:
        """The new state and offset: what the store holds now, and the
        piece just C{staged} (name, length), if any."""
        raise NotImplementedError(f"{type(self).__name__} must say what its state is")

    def _dropped(self) -> Appended:
        raise NotImplementedError(f"{type(self).__name__} must say how bytes are dropped")


def deleteQuietly(delete: Callable[[str], Deferred[None]], names: list[str], key: str) -> None:
    """Delete pieces no state holds any more, in the background: what fails
    is left for L{IResumableBlobStore.conclude} or C{cancel} to find."""

    def kept(reason: Failure, name: str) -> None:
        log.info(
            "staged piece {name} stays until the write to {key} ends: {why}",
            name=name,
            key=key,
            why=reason.getErrorMessage(),
        )

    for name in names:
        delete(name).addErrback(kept, name)


async def concludedBefore(stat: Callable[[str], Deferred[int]], key: str, size: int) -> bool:
    """
    Whether C{key} holds a blob of C{size} bytes already: a conclusion
    asked again (its caller did not hear the first one's answer) finds its
    upload gone and its blob there, and is done.
    """
    try:
        return bool(await stat(key) == size)
    except BlobStoreError:
        return False
