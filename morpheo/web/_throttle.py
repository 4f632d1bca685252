# -*- test-case-name: tests.unit.test_logins -*-
"""
Failed logins counted per client address, so that one client guessing
passwords is slowed down to a few guesses a minute (429 with C{Retry-After})
while every other client is served as before.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from .._metrics import Metrics

#: Leeway for the floating-point arithmetic of a bucket that has just drained.
_EPSILON = 1e-9


def clientKey(request: IRequest) -> str:
    """
    The address a client's failures are counted under: its IP address, or
    for IPv6 its /64 (what one host or one customer usually has); every
    UNIX socket client counts as one.
    """
    host = getattr(request.getClientAddress(), "host", None)
    if not isinstance(host, str):
        return "local"
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """
    At most C{failures} failed logins per C{period} seconds from one
    address, as a leaky bucket: each login being checked adds one to the
    address's bucket (taken back if it succeeds), the bucket drains at
    C{failures} per C{period}, and a login that would overflow it is
    refused until it has drained enough.  A burst of C{failures} is
    allowed, then one login every C{period / failures} seconds; since
    logins count while they are being checked, sending many at once gains
    nothing.

    Only addresses whose bucket is not empty are remembered, at most
    C{addresses} of them: past that, the one seen least recently is
    forgotten.  Time is C{clock}'s.  How many are remembered is C{metrics}'
    gauge (a fresh L{Metrics} by default).
    """

    def __init__(
        self,
        clock: IReactorTime,
        failures: int,
        period: float = 60.0,
        addresses: int = 10_000,
        metrics: Metrics | None = None,
    ) -> None:
        self._gauge = (Metrics() if metrics is None else metrics).throttledAddresses
        if failures < 1 or period <= 0 or addresses < 1:
            raise ValueError("failures, period and addresses must be positive")
        self._clock = clock
        self.allowed = failures
        self.period = period
        self.addresses = addresses
        self._rate = failures / period
        #: address -> (level, when it was that), least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, address: str, now: float) -> float:
        level, then = self._buckets.get(address, (0.0, now))
        return max(0.0, level - (now - then) * self._rate)

    def failures(self, address: str) -> float:
        """C{address}'s failures not drained yet (logins being checked included)."""
        return self._level(address, self._clock.seconds())

    def retryAfter(self, address: str) -> int | None:
        """L{None} if C{address} may try a login now, else the seconds it must wait."""
        over = self.failures(address) + 1 - self.allowed
        if over <= _EPSILON:
            return None
        return max(1, math.ceil(over / self._rate - _EPSILON))

    def attempt(self, address: str) -> None:
        """A login from C{address} is being checked: count it as failed until it is not."""
        self._add(address, 1.0)

    def refund(self, address: str) -> None:
        """The login counted by L{attempt} was not a failure after all."""
        self._add(address, -1.0)

    def _add(self, address: str, amount: float) -> None:
        now = self._clock.seconds()
        level = self._level(address, now) + amount
        if level > _EPSILON:
            self._buckets[address] = (level, now)
            self._buckets.move_to_end(address)
        else:
            self._buckets.pop(address, None)
        # The least recently seen first: drained ones are forgotten, and
        # the oldest beyond the bound.
        while self._buckets:
            oldest = next(iter(self._buckets))
            if len(self._buckets) <= self.addresses and self._level(oldest, now) > _EPSILON:
                break
            del self._buckets[oldest]
        self._gauge.set(len(self._buckets))


__all__ = ["LoginThrottle", "clientKey"]
