# -*- test-case-name: tests.unit.test_observer -*-
"""
One result, any number of waiters.

A L{Deferred} can be waited for once, and complains when nobody does: a
result that several parties wait for (an upload's outcome, the end of an
abort, a digest) is kept here and each waiter gets a L{Deferred} of its own.
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


class _Unfired(Enum):
    UNFIRED = "unfired"


_UNFIRED = _Unfired.UNFIRED


class OneShotObserverList(Generic[T]):
    """
    A result that arrives once (a value or a L{Failure}) and that anybody
    may wait for, before or after it arrives.  Waiters are fired in the
    order they came, in the call that brings the result, so that what they
    do happens before whoever fired it moves on.
    """

    def __init__(self) -> None:
        self._result: T | Failure | _Unfired = _UNFIRED
        self._watchers: list[Deferred[T]] = []

    def __repr__(self) -> str:
        if self._result is _UNFIRED:
            return f"<OneShotObserverList unfired, {len(self._watchers)} waiting>"
        return f"<OneShotObserverList fired with {self._result!r}>"

    @property
    def fired(self) -> bool:
        return self._result is not _UNFIRED

    def whenFired(self) -> Deferred[T]:
        """A L{Deferred} of its own that fires with the result."""
        d: Deferred[T] = Deferred()
        if self._result is _UNFIRED:
            self._watchers.append(d)
        else:
            self._fireOne(d)
        return d

    def fire(self, result: T | Failure) -> None:
        """Bring the result; a second one is a mistake."""
        if self._result is not _UNFIRED:
            raise RuntimeError(f"{self!r} fired again with {result!r}")
        self._result = result
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            self._fireOne(d)

    def fireIfNotFired(self, result: T | Failure) -> None:
        """Bring the result unless one came already (the first one wins)."""
        if self._result is _UNFIRED:
            self.fire(result)

    def _fireOne(self, d: Deferred[T]) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(cast(T, self._result))
