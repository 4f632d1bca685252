# -*- test-case-name: tests.integration.test_graceful -*-
"""
Graceful stop: once the service stops listening, in-flight transfers may
finish up to a deadline; then the connections still open are cut, and the
stop waits for their handlers to clean up (release the uuid, delete the
partial blob) before the database closes, so that a cut upload leaves
nothing behind.

Two things are tracked: the connections of the site (L{DrainingSite}), and
the handlers of the storage routes (L{HandlerTracker}), whose clean-up
outlives their connection.
"""

from __future__ import annotations

from typing import Any

from klein.resource import KleinResource
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from ..web._streaming import BodyAborted, StreamingChannel, StreamingSite


class _Waiters:
    """Deferreds fired when a count drops to zero."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def fire(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


async def _within(reactor: IReactorTime, d: Deferred[None], timeout: float) -> bool:
    """Whether C{d} fired within C{timeout} seconds (it is cancelled otherwise)."""
    done = [False]

    def fired(_: object) -> None:
        done[0] = True

    d.addCallback(fired)
    timer = reactor.callLater(timeout, d.cancel)
    try:
        await d
    except Exception:
        pass
    if timer.active():
        timer.cancel()
    return done[0]


class HandlerTracker:
    """Counts the route handlers running, their clean-up included."""

    def __init__(self) -> None:
        self.running = 0
        self._idle = _Waiters()

    def track(self, d: Deferred[Any]) -> Deferred[Any]:
        self.running += 1

        def done(result: object) -> object:
            self.running -= 1
            if not self.running:
                self._idle.fire()
            return result

        # Added first, so it fires after the handler's own coroutine ends
        # (a cancelled coroutine Deferred fires only once the coroutine has
        # run its except/finally blocks).
        return d.addBoth(done)

    def whenIdle(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        return self._idle.wait()


def _clientGone(failure: Failure) -> None:
    """
    A handler that ends with its client gone (L{BodyAborted}) has nobody to
    answer and has cleaned up; Klein would log it as an unhandled error
    (it stays quiet only for a L{CancelledError}).  The access log records
    the request as aborted.
    """
    failure.trap(BodyAborted)


class _TrackedApp:
    """
    A Klein app as L{KleinResource} sees it, with each endpoint's Deferred
    counted by a L{HandlerTracker}, and its end quiet when the client went
    away.  Everything else is the app's own.
    """

    def __init__(self, app: Any, tracker: HandlerTracker) -> None:
        self._app = app
        self._tracker = tracker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def execute_endpoint(
        self, endpoint: str, request: Any, *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        d = maybeDeferred(self._app.execute_endpoint, endpoint, request, *args, **kwargs)
        return self._tracker.track(d).addErrback(_clientGone)


def trackedResource(app: Any, tracker: HandlerTracker) -> IResource:
    """The resource of Klein C{app} (bound to its instance), tracked by C{tracker}."""
    return KleinResource(_TrackedApp(app, tracker))  # type: ignore[arg-type]


class _DrainingChannel(StreamingChannel):
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        site = getattr(self, "site", None)
        if isinstance(site, DrainingSite):
            site._channelGone(self)


class DrainingSite(StreamingSite):
    """
    A L{StreamingSite} that knows its open connections, so that a stop can
    close the idle ones, let the busy ones finish their request, and cut
    those still busy at a deadline.
    """

    protocol = _DrainingChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channels: set[_DrainingChannel] = set()
        self._allGone = _Waiters()
        self.draining = False

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            self._channels.add(channel)
        return channel

    def _channelGone(self, channel: _DrainingChannel) -> None:
        self._channels.discard(channel)
        if not self._channels:
            self._allGone.fire()

    @property
    def openConnections(self) -> int:
        return len(self._channels)

    async def drain(self, reactor: IReactorTime, timeout: float) -> int:
        """
        Close the idle connections now, the busy ones once their current
        response is sent; after C{timeout} seconds cut those left.  Returns
        how many were cut.
        """
        self.draining = True
        for channel in list(self._channels):
            channel.persistent = False
            if not channel.requests and channel.transport is not None:
                channel.transport.loseConnection()
        if not self._channels:
            return 0
        if await _within(reactor, self._allGone.wait(), timeout):
            return 0
        cut = list(self._channels)
        for channel in cut:
            transport: Any = channel.transport  # TCP, TLS and UNIX: all can abort
            if transport is not None:
                transport.abortConnection()
        # abortConnection reports the loss on the next reactor turn.
        await deferLater(reactor, 0, lambda: None)
        return len(cut)


__all__ = ["DrainingSite", "HandlerTracker", "trackedResource"]
