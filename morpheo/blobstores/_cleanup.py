# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
Cleaning up after a failed upload in the background, again and again while
the store cannot be reached: the client has its answer already, and what a
failed upload leaves in the store (a multipart upload, a committed object)
is removed once the store is back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._http import describeFailure

log = Logger()

#: Seconds between the attempts to clean up after a failed upload while the
#: store cannot be reached: from 1 s, doubling, to every minute for an hour.
CLEANUP_RETRIES = (1, 2, 4, 8, 16, 32, *(60,) * 59)


def retryLater(
    clock: IReactorTime,
    attempt: Callable[[], Deferred[None]],
    key: str,
    reason: Failure,
    delays: Iterable[float] = CLEANUP_RETRIES,
) -> None:
    """Call C{attempt}, which failed with C{reason}, again after each of
    C{delays} until it succeeds."""
    remaining = iter(delays)

    def again() -> None:
        attempt().addCallbacks(succeeded, failed)

    def succeeded(_: object) -> None:
        log.info("cleaned up {key} after all", key=key)

    def failed(reason: Failure) -> None:
        delay = next(remaining, None)
        if delay is None:
            log.error("giving up cleaning up {key}: {why}", key=key, why=describeFailure(reason))
            return
        clock.callLater(delay, again)

    log.warn(
        "cleaning up {key} failed ({why}); trying again in the background",
        key=key,
        why=describeFailure(reason),
    )
    failed(reason)


def cleanUp(clock: IReactorTime, attempt: Callable[[], Deferred[None]], key: str) -> Deferred[None]:
    """Call C{attempt} now; fires when it succeeded or, if it failed, once
    its retries are scheduled."""
    d = attempt()

    def failed(reason: Failure) -> None:
        # The store is likely down (which may be why we clean up): try
        # again later rather than leave an upload or an object behind.
        retryLater(clock, attempt, key, reason)

    return d.addErrback(failed)
