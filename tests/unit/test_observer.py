"""
L{OneShotObserverList}: one result, given to every waiter, before or after
it arrives.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from morpheo._observer import OneShotObserverList


def results(d: Deferred[Any]) -> list[object]:
    got: list[object] = []
    d.addBoth(got.append)
    return got


def test_every_waiter_gets_the_result_once() -> None:
    observers: OneShotObserverList[str] = OneShotObserverList()
    early, alsoEarly = results(observers.whenFired()), results(observers.whenFired())
    assert not observers.fired and early == []
    observers.fire("done")
    assert observers.fired
    late = results(observers.whenFired())
    assert early == alsoEarly == late == ["done"]


def test_waiters_fire_in_order_within_fire() -> None:
    observers: OneShotObserverList[int] = OneShotObserverList()
    order: list[str] = []
    observers.whenFired().addCallback(lambda _: order.append("first"))
    observers.whenFired().addCallback(lambda _: order.append("second"))
    observers.fire(1)
    order.append("after fire")
    assert order == ["first", "second", "after fire"]


def test_a_failure_reaches_every_waiter() -> None:
    observers: OneShotObserverList[None] = OneShotObserverList()
    early = results(observers.whenFired())
    observers.fire(Failure(ValueError("broken")))
    late = results(observers.whenFired())
    for got in (early, late):
        assert isinstance(got[0], Failure) and got[0].check(ValueError)


def test_the_first_result_wins() -> None:
    observers: OneShotObserverList[str] = OneShotObserverList()
    observers.fireIfNotFired("first")
    observers.fireIfNotFired("second")
    assert results(observers.whenFired()) == ["first"]
    with pytest.raises(RuntimeError):
        observers.fire("third")


def test_a_waiter_may_wait_again_while_it_is_fired() -> None:
    observers: OneShotObserverList[str] = OneShotObserverList()
    again: list[object] = []
    observers.whenFired().addCallback(lambda _: observers.whenFired().addCallback(again.append))
    observers.fire("result")
    assert again == ["result"]
