# -*- test-case-name: tests.integration.test_auth -*-
"""
twisted.cred checkers for the service's users: the one user of
C{--user/--password}, and password files (C{--auth file:PATH}) whose lines
may hold hashed passwords.

Twisted's own C{file:} checker keeps passwords in clear and compares them
with C{==}; these compare in constant time, accept salted hashes, and run
the (deliberately slow) hash functions in a thread, never on the reactor.

Hash formats, the ones Django writes, so existing tools can make them:

    - C{pbkdf2_sha256$ITERATIONS$SALT$BASE64(HASH)}
    - C{scrypt$N$SALT$R$P$BASE64(HASH)} (64-byte hash)

Make one with C{python -m morpheo.passwd USER}.  A line whose password part
is not one of these is a clear-text password (as in Twisted's C{file:}).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

PBKDF2_ITERATIONS = 600_000
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


def _unbound(check: Callable[[], bool]) -> Deferred[bool]:
    return fail(
        RuntimeError(
            "PasswordFileChecker has no thread pool to check hashes in:"
            " call useThreadPool(reactor, pool), or give inThread"
        )
    )


class PasswordFileError(ValueError):
    """A password file cannot be used; the message names the file and line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: bytes, salt: str, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt.encode(), n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=64
    )


def hashPassword(password: str, method: str = "scrypt") -> str:
    """A salted hash of C{password} for a password file (C{scrypt} or C{pbkdf2_sha256})."""
    salt = secrets.token_urlsafe(16)
    if method == "scrypt":
        digest = _scrypt(password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return f"scrypt${SCRYPT_N}${salt}${SCRYPT_R}${SCRYPT_P}${_b64(digest)}"
    if method == "pbkdf2_sha256":
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), salt.encode(), PBKDF2_ITERATIONS
        )
        return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt}${_b64(digest)}"
    raise ValueError(f"unknown hash method {method!r}: scrypt or pbkdf2_sha256")


def isHashed(stored: str) -> bool:
    return stored.startswith(("scrypt$", "pbkdf2_sha256$"))


def _parseHash(stored: str) -> Callable[[bytes], bool]:
    """A verifier for one stored hash, or L{ValueError} if it is malformed."""
    parts = stored.split("$")
    if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
        iterations, salt, expected = (
            int(parts[1]),
            parts[2],
            base64.b64decode(parts[3], validate=True),
        )
        if iterations < 1:
            raise ValueError("iterations")
        return lambda pw: hmac.compare_digest(
            hashlib.pbkdf2_hmac("sha256", pw, salt.encode(), iterations), expected
        )
    if parts[0] == "scrypt" and len(parts) == 6:
        n, salt, r, p = int(parts[1]), parts[2], int(parts[3]), int(parts[4])
        expected = base64.b64decode(parts[5], validate=True)
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise ValueError("parameters")
        return lambda pw: hmac.compare_digest(_scrypt(pw, salt, n, r, p), expected)
    raise ValueError("format")


def verifyPassword(password: str, stored: str) -> bool:
    """Whether C{password} matches C{stored} (a hash, or a clear-text password)."""
    if isHashed(stored):
        return _parseHash(stored)(password.encode("utf-8"))
    return hmac.compare_digest(password.encode("utf-8"), stored.encode("utf-8"))


@functools.cache
def _dummyHash() -> str:
    """Checked when the user is unknown, so that its timing matches a known one."""
    return hashPassword(secrets.token_hex(8), "scrypt")


@implementer(ICredentialsChecker)
class UsersChecker:
    """
    A fixed set of users with clear-text passwords (C{--user/--password}).

    Every user's password is compared, in constant time, whatever the name:
    timing tells nothing about either.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {u.encode("utf-8"): p.encode("utf-8") for u, p in users.items()}

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        user, password = credentials.username, credentials.password
        ok = False
        for name, expected in self._users.items():
            nameOK = hmac.compare_digest(name, user)
            passOK = hmac.compare_digest(expected, password)
            ok |= nameOK and passOK
        return succeed(user) if ok else fail(UnauthorizedLogin("wrong user name or password"))


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """
    Users from a file of C{name:password} lines (C{#} starts a comment),
    each password in clear or hashed (see the module's docstring).

    The file is read once, when the checker is made: a bad file stops
    start-up.  Hashes are checked in a thread; a good password is then
    remembered (as a keyed digest, never in clear) so that Basic auth,
    which sends it with every request, does not pay the hash every time.
    """

    credentialInterfaces = (IUsernamePassword,)
    cacheSize = 256

    def __init__(
        self,
        path: str,
        inThread: Callable[[Callable[[], bool]], Deferred[bool]] | None = None,
    ) -> None:
        self.path = path
        self._inThread: Callable[[Callable[[], bool]], Deferred[bool]] = inThread or _unbound
        self._users: dict[bytes, str] = {}
        self._cacheKey = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise PasswordFileError(f"cannot read the password file {path}: {e.strerror}") from e
        except UnicodeDecodeError:
            raise PasswordFileError(f"the password file {path} is not UTF-8 text") from None
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not name:
                raise PasswordFileError(f"{path}, line {number}: not a user:password line")
            if isHashed(stored):
                try:
                    _parseHash(stored)
                except (ValueError, TypeError):
                    raise PasswordFileError(
                        f"{path}, line {number}: malformed password hash"
                    ) from None
            self._users[name.encode("utf-8")] = stored
        if not self._users:
            raise PasswordFileError(f"the password file {path} names no user")

    def useThreadPool(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        """Check hashes in C{pool} (the service gives its own when it starts)."""
        self._inThread = lambda f: deferToThreadPool(reactor, pool, f)

    @property
    def users(self) -> list[str]:
        return sorted(u.decode("utf-8") for u in self._users)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        user: bytes = credentials.username
        password: bytes = credentials.password
        stored = self._users.get(user)
        key = hmac.new(self._cacheKey, user + b"\0" + password, hashlib.sha256).digest()
        if stored is not None and key in self._cache:
            self._cache.move_to_end(key)
            return succeed(user)
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            text = "\ufffd"

        def check() -> bool:
            # An unknown user costs one hash too: timing tells nothing.
            if stored is None:
                return verifyPassword(text, _dummyHash()) and False
            return verifyPassword(text, stored)

        if stored is not None and not isHashed(stored):
            d: Deferred[bool] = succeed(check())
        else:
            d = self._inThread(check)

        def decide(ok: bool) -> bytes:
            if not ok:
                raise UnauthorizedLogin("wrong user name or password")
            self._cache[key] = None
            while len(self._cache) > self.cacheSize:
                self._cache.popitem(last=False)
            return user

        return d.addCallback(decide)


@implementer(ICredentialsChecker)
class AnyOf:
    """
    Several checkers as one: a L{twisted.cred.portal.Portal} keeps one
    checker per credentials interface, and C{--user} may come with any
    number of C{--auth}.  The first that accepts wins.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: list[ICredentialsChecker]) -> None:
        self.checkers = [c for c in checkers if IUsernamePassword in c.credentialInterfaces]

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        async def tryAll() -> bytes | tuple[()]:
            for checker in self.checkers:
                try:
                    return await maybeDeferred(checker.requestAvatarId, credentials)
                except LoginFailed:
                    continue
            raise UnauthorizedLogin("wrong user name or password")

        return Deferred.fromCoroutine(tryAll())


__all__ = [
    "AnyOf",
    "PasswordFileChecker",
    "PasswordFileError",
    "UsersChecker",
    "hashPassword",
    "verifyPassword",
]
