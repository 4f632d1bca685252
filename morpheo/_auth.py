# -*- test-case-name: tests.test_api -*-
"""
HTTP Basic authentication for the data routes.
"""

from __future__ import annotations

import hmac

from twisted.web.iweb import IRequest

from ._types import APIError


class Unauthorized(APIError):
    """Missing or wrong credentials: a 401 that asks for Basic auth."""

    def __init__(self, realm: str, message: str) -> None:
        super().__init__(401, message)
        self.realm = realm


class BasicAuth:
    """
    Checks a request's Basic credentials against a fixed set of users.

    Every user's password is compared, with L{hmac.compare_digest}, whether
    or not the name matched, so timing tells nothing about either.
    """

    def __init__(self, users: dict[str, str], realm: str = "morpheo-storage") -> None:
        if not users:
            raise ValueError("at least one user is needed")
        self._users = {u.encode("utf-8"): p.encode("utf-8") for u, p in users.items()}
        self.realm = realm

    def check(self, request: IRequest) -> str:
        """The user's name, or raise L{Unauthorized}."""
        header = request.getHeader(b"authorization")
        if not header or not header[:6].lower() == b"basic ":
            raise Unauthorized(self.realm, "this route needs HTTP Basic credentials")
        user, password = request.getUser(), request.getPassword()
        ok = False
        for name, expected in self._users.items():
            nameOK = hmac.compare_digest(name, user)
            passOK = hmac.compare_digest(expected, password)
            ok |= nameOK and passOK
        if not ok:
            raise Unauthorized(self.realm, "wrong user name or password")
        return user.decode("utf-8", "replace")
