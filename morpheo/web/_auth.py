# -*- test-case-name: tests.unit.test_logins,tests.integration.test_auth -*-
"""
HTTP Basic authentication for the data routes, through twisted.cred: the
credentials go to a L{Portal} whose checkers (C{--user/--password}, any
C{--auth} of the twistd convention) decide; the avatar is the user's name.

Basic auth sends the password with every request, and checking a hashed one
is slow on purpose: credentials that passed are remembered for a while (a
keyed digest of them, never the password), identical ones being checked are
checked once, and failures are counted per client address (L{LoginThrottle}).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from .._errors import APIError
from .._metrics import Metrics
from ._passwords import AnyOf, LoginsBusy, UsersChecker
from ._throttle import LoginThrottle, clientKey

#: How long a good password is taken on trust (seconds), and for how many
#: credentials at most.
REMEMBER_FOR = 300.0
REMEMBERED = 256


class Unauthorized(APIError):
    """Missing or wrong credentials: a 401 that asks for Basic auth."""

    def __init__(self, realm: str, message: str) -> None:
        super().__init__(401, message)
        self.realm = realm


class _Credentials(UsernamePassword):
    """Basic credentials, and how soon to check them: their address's recent failures."""

    def __init__(self, username: bytes, password: bytes, priority: float) -> None:
        super().__init__(username, password)
        self.priority = priority


class IStorageUser(Interface):
    """The avatar interface: a user of the storage routes (its name)."""


@implementer(IRealm)
class _UserRealm:
    """Every authenticated user may use every data route: the avatar is the name."""

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, str, Any]:
        if IStorageUser not in interfaces:
            raise NotImplementedError("only IStorageUser avatars")
        name = avatarId.decode("utf-8", "replace") if isinstance(avatarId, bytes) else str(avatarId)
        return IStorageUser, name, lambda: None


class BasicAuth:
    """
    Checks a request's Basic credentials.

    Give it C{users} (name to clear-text password, as C{--user/--password})
    and/or twisted.cred C{checkers} (C{--auth file:...}, or any other
    L{ICredentialsChecker} for L{IUsernamePassword}).  L{check} fires with
    the user's name or fails with L{Unauthorized}.

    With a C{clock}, credentials that passed are taken on trust for
    C{rememberFor} seconds (at most C{remembered} of them, the least
    recently used forgotten first).  With a C{throttle}, an address that
    failed too often is refused with 429 before its credentials are looked
    at, remembered ones included: else the memory of good passwords would
    answer its guesses for free.  A login that could not be checked (503:
    too many waiting) counts as failed too: a client that keeps asking
    while told to wait is throttled like one that guesses.  Failed logins
    are counted in C{metrics} (a fresh L{Metrics} by default), by reason.
    """

    _log = Logger()

    def __init__(
        self,
        users: dict[str, str] | None = None,
        realm: str = "morpheo-storage",
        checkers: list[ICredentialsChecker] | tuple[ICredentialsChecker, ...] = (),
        *,
        clock: IReactorTime | None = None,
        throttle: LoginThrottle | None = None,
        rememberFor: float = REMEMBER_FOR,
        remembered: int = REMEMBERED,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = Metrics() if metrics is None else metrics
        all = ([UsersChecker(users)] if users else []) + list(checkers)
        if not all:
            raise ValueError("at least one user or checker is needed")
        self.realm = realm
        self.portal = Portal(_UserRealm(), [AnyOf(all)])
        self.throttle = throttle
        self._clock = clock
        self._rememberFor = rememberFor
        self._remembered = remembered
        self._key = secrets.token_bytes(32)
        #: digest -> (the user's name, until when it is trusted)
        self._good: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        #: digest -> the requests waiting for the check of those credentials
        self._checking: dict[bytes, list[Deferred[str]]] = {}

    def check(self, request: IRequest) -> Deferred[str]:
        """The user's name, or a failure with L{Unauthorized} (or a 429, a 503)."""
        header = request.getHeader(b"authorization")
        if not header or header[:6].lower() != b"basic ":
            raise Unauthorized(self.realm, "this route needs HTTP Basic credentials")
        address = clientKey(request)
        if self.throttle is not None:
            wait = self.throttle.retryAfter(address)
            if wait is not None:
                self.metrics.loginFailures["throttled"].inc()
                raise APIError(
                    429,
                    f"too many failed logins from this address: try again in {wait} s",
                    retryAfter=wait,
                )
        user, password = request.getUser(), request.getPassword()
        digest = hmac.new(
            self._key, b"%d:%s:%s" % (len(user), user, password), hashlib.sha256
        ).digest()
        remembered = self._trusted(digest)
        waiter: Deferred[str] = Deferred()
        if remembered is not None:
            waiter.callback(remembered)
        elif digest in self._checking:
            self._checking[digest].append(waiter)
        else:
            self._checking[digest] = [waiter]
            priority = self.throttle.failures(address) if self.throttle is not None else 0.0
            self._login(digest, _Credentials(user, password, priority), address)
        return waiter

    def _trusted(self, digest: bytes) -> str | None:
        if self._clock is None or digest not in self._good:
            return None
        name, until = self._good[digest]
        if self._clock.seconds() >= until:
            del self._good[digest]
            return None
        self._good.move_to_end(digest)
        return name

    def _remember(self, digest: bytes, name: str) -> None:
        if self._clock is None:
            return
        self._good[digest] = (name, self._clock.seconds() + self._rememberFor)
        self._good.move_to_end(digest)
        while len(self._good) > self._remembered:
            self._good.popitem(last=False)

    def _login(self, digest: bytes, credentials: _Credentials, address: str) -> None:
        """Check once for everyone waiting on C{digest}, then tell them all."""
        throttle = self.throttle
        if throttle is not None:
            throttle.attempt(address)

        def settled(result: Any) -> None:
            outcome: str | Failure
            if isinstance(result, Failure):
                outcome = self._refusal(result)
            else:
                name: str = result[1]
                self._remember(digest, name)
                if throttle is not None:
                    throttle.refund(address)
                outcome = name
            for waiter in self._checking.pop(digest):
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)

        self.portal.login(credentials, None, IStorageUser).addBoth(settled)

    def _refusal(self, failure: Failure) -> Failure:
        """What the client is told when its credentials were not accepted."""
        failures = self.metrics.loginFailures
        if failure.check(LoginFailed, UnhandledCredentials):
            failures["wrong"].inc()
            return Failure(Unauthorized(self.realm, "wrong user name or password"))
        if failure.check(LoginsBusy):
            failures["busy"].inc()
            message = "too many logins are being checked right now: try again in a second"
            return Failure(APIError(503, message, retryAfter=1))
        failures["error"].inc()
        self._log.failure("a credentials checker failed", failure)
        return Failure(APIError(503, "credentials cannot be checked right now", retryAfter=1))


__all__ = ["BasicAuth", "IStorageUser", "Unauthorized"]
