# -*- test-case-name: tests.integration.test_auth -*-
"""
HTTP Basic authentication for the data routes, through twisted.cred: the
credentials go to a L{Portal} whose checkers (C{--user/--password}, any
C{--auth} of the twistd convention) decide; the avatar is the user's name.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from .._errors import APIError
from ._passwords import AnyOf, UsersChecker


class Unauthorized(APIError):
    """Missing or wrong credentials: a 401 that asks for Basic auth."""

    def __init__(self, realm: str, message: str) -> None:
        super().__init__(401, message)
        self.realm = realm


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
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        realm: str = "morpheo-storage",
        checkers: list[ICredentialsChecker] | tuple[ICredentialsChecker, ...] = (),
    ) -> None:
        all = ([UsersChecker(users)] if users else []) + list(checkers)
        if not all:
            raise ValueError("at least one user or checker is needed")
        self.realm = realm
        self.portal = Portal(_UserRealm(), [AnyOf(all)])

    def check(self, request: IRequest) -> Deferred[str]:
        """The user's name, or a failure with L{Unauthorized}."""
        header = request.getHeader(b"authorization")
        if not header or header[:6].lower() != b"basic ":
            raise Unauthorized(self.realm, "this route needs HTTP Basic credentials")
        credentials = UsernamePassword(request.getUser(), request.getPassword())

        def loggedIn(result: tuple[Any, str, Any]) -> str:
            return result[1]

        def refused(failure: Failure) -> str:
            failure.trap(LoginFailed, UnhandledCredentials)
            raise Unauthorized(self.realm, "wrong user name or password")

        d = self.portal.login(credentials, None, IStorageUser)
        return d.addCallbacks(loggedIn, refused)


__all__ = ["BasicAuth", "IStorageUser", "Unauthorized"]
