# -*- test-case-name: tests.unit.test_logins,tests.integration.test_auth -*-
"""
twisted.cred checkers for the service's users: the one user of
C{--user/--password}, and password files (C{--auth file:PATH}) whose lines
may hold hashed passwords.

Twisted's own C{file:} checker keeps passwords in clear and compares them
with C{==}; these compare in constant time, accept salted hashes, and run
the (deliberately slow) hash functions in a thread, never on the reactor,
a few at a time (L{HashingPool}).

Hash formats, the ones Django writes, so existing tools can make them:

    - C{pbkdf2_sha256$ITERATIONS$SALT$BASE64(HASH)}
    - C{scrypt$N$SALT$R$P$BASE64(HASH)} (64-byte hash)

Make one with C{python -m morpheo.passwd USER}.  A line whose password part
is not one of these is a clear-text password (as in Twisted's C{file:}).

A check costs one hash whoever asks: a known user's own, and for a name the
file does not hold, or holds in clear, one of the same cost as the file's
hashes.  How long a refusal takes tells nothing about which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import field, frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

T = TypeVar("T")

PBKDF2_ITERATIONS = 600_000
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_DEFAULT_PARAMS: dict[str, tuple[int, ...]] = {
    "pbkdf2_sha256": (PBKDF2_ITERATIONS,),
    "scrypt": (SCRYPT_N, SCRYPT_R, SCRYPT_P),
}
_SCHEMES = tuple(_DEFAULT_PARAMS)


class PasswordFileError(ValueError):
    """A password file cannot be used; the message names the file and line."""


class LoginsBusy(Exception):
    """
    Too many password checks are running or waiting: this one is refused
    at once (the service answers 503) instead of waiting behind them.
    """


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@frozen
class PasswordHash:
    """
    A salted password hash as a password file holds it.  Its C{scheme}
    and C{params} (PBKDF2's iterations; scrypt's n, r, p) are its cost.
    """

    scheme: str
    params: tuple[int, ...]
    salt: str
    digest: bytes = field(repr=False)

    @classmethod
    def parse(cls, stored: str) -> PasswordHash:
        """The hash of a file's line, or L{ValueError} if it is malformed."""
        parts = stored.split("$")
        params: tuple[int, ...]
        if parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            params, salt, encoded = (int(parts[1]),), parts[2], parts[3]
            if params[0] < 1:
                raise ValueError("iterations")
        elif parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[3]), int(parts[4])
            params, salt, encoded = (n, r, p), parts[2], parts[5]
            if n < 2 or n & (n - 1) or r < 1 or p < 1:
                raise ValueError("parameters")
        else:
            raise ValueError("format")
        return cls(parts[0], params, salt, base64.b64decode(encoded, validate=True))

    @classmethod
    def new(
        cls, password: str, scheme: str = "scrypt", params: tuple[int, ...] | None = None
    ) -> PasswordHash:
        """A new salted hash of C{password}, at the default cost unless told."""
        if scheme not in _SCHEMES:
            raise ValueError(f"unknown hash method {scheme!r}: scrypt or pbkdf2_sha256")
        if params is None:
            params = _DEFAULT_PARAMS[scheme]
        unsalted = cls(scheme, params, secrets.token_urlsafe(16), b"")
        return cls(scheme, params, unsalted.salt, unsalted.derive(password.encode("utf-8")))

    def __str__(self) -> str:
        if self.scheme == "pbkdf2_sha256":
            return f"pbkdf2_sha256${self.params[0]}${self.salt}${_b64(self.digest)}"
        n, r, p = self.params
        return f"scrypt${n}${self.salt}${r}${p}${_b64(self.digest)}"

    def derive(self, password: bytes) -> bytes:
        """The (slow) hash of C{password} with this salt and cost."""
        if self.scheme == "pbkdf2_sha256":
            return hashlib.pbkdf2_hmac("sha256", password, self.salt.encode(), self.params[0])
        n, r, p = self.params
        return hashlib.scrypt(
            password, salt=self.salt.encode(), n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=64
        )

    def dummy(self) -> PasswordHash:
        """A hash of the same cost that no password matches (random salt and digest)."""
        salt = secrets.token_urlsafe(len(self.salt))[: len(self.salt)]
        return PasswordHash(self.scheme, self.params, salt, os.urandom(len(self.digest)))


#: What a clear-text or unknown user's check costs when the file holds no hash.
_DEFAULT_COST = PasswordHash("scrypt", _DEFAULT_PARAMS["scrypt"], "x" * 22, b"\0" * 64)

#: The hash function a checker computes; a test may count its calls.
Hasher = Callable[[PasswordHash, bytes], bytes]


def hashPassword(password: str, method: str = "scrypt") -> str:
    """A salted hash of C{password} for a password file (C{scrypt} or C{pbkdf2_sha256})."""
    return str(PasswordHash.new(password, method))


def isHashed(stored: str) -> bool:
    return stored.startswith(tuple(f"{scheme}$" for scheme in _SCHEMES))


def verifyPassword(password: str, stored: str) -> bool:
    """Whether C{password} matches C{stored} (a hash, or a clear-text password)."""
    if isHashed(stored):
        hashed = PasswordHash.parse(stored)
        return hmac.compare_digest(hashed.derive(password.encode("utf-8")), hashed.digest)
    return hmac.compare_digest(password.encode("utf-8"), stored.encode("utf-8"))


def defaultHashConcurrency() -> int:
    """Half the CPUs, one to four: the reactor keeps a CPU while hashes run."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


@frozen
class _Waiting:
    """A check waiting for a thread, and who waits for its result."""

    priority: float
    order: int
    work: Callable[[], Any]
    waiter: Deferred[Any]


class HashingPool:
    """
    Runs password hashes in a thread pool, C{concurrency} at a time, with at
    most C{queue} more waiting; beyond that a check fails at once with
    L{LoginsBusy}.  A scrypt hash holds 32 MiB while it runs and PBKDF2 a
    CPU: clients guessing passwords cannot take the memory, the CPUs or the
    service's threads (which the blob stores share), and what waits waits
    a bounded time.

    Each check comes with a C{priority}, the lower the sooner (the service
    gives its address's recent failures): a client that has not been
    failing goes before those that have, and when the queue is full takes
    the place of the one that failed most.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        concurrency: int | None = None,
        queue: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self.concurrency = concurrency or defaultHashConcurrency()
        self.queue = 4 * self.concurrency if queue is None else queue
        self.running = 0
        self._waiting: list[_Waiting] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def run(self, work: Callable[[], T], priority: float = 0.0) -> Deferred[T]:
        """C{work()} in a thread, now or once the running ones are done."""
        if self.running < self.concurrency:
            return self._start(work)
        waiter: Deferred[T] = Deferred()
        waiting = _Waiting(priority, next(self._order), work, waiter)
        if len(self._waiting) >= self.queue:
            last = max(self._waiting, key=_rank, default=None)
            if last is None or _rank(last) < _rank(waiting):
                return fail(LoginsBusy("too many logins are being checked right now"))
            self._waiting.remove(last)
            last.waiter.errback(LoginsBusy("too many logins are being checked right now"))
        self._waiting.append(waiting)
        return waiter

    def _start(self, work: Callable[[], T]) -> Deferred[T]:
        self.running += 1
        d = deferToThreadPool(self._reactor, self._pool, work)
        d.addBoth(self._done)
        return d

    def _done(self, result: T) -> T:
        self.running -= 1
        if self._waiting:
            first = min(self._waiting, key=_rank)
            self._waiting.remove(first)
            self._start(first.work).chainDeferred(first.waiter)
        return result


def _rank(waiting: _Waiting) -> tuple[float, int]:
    return (waiting.priority, waiting.order)


def _unbound(work: Callable[[], bool], priority: float) -> Deferred[bool]:
    return fail(
        RuntimeError(
            "PasswordFileChecker has no thread pool to check hashes in:"
            " call useThreadPool(reactor, pool) or useHashing(hashingPool)"
        )
    )


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


@frozen
class _Entry:
    """What checking one name costs (C{work}) and decides (the hash's digest, or C{clear})."""

    work: PasswordHash
    clear: bytes | None = field(default=None, repr=False)
    known: bool = True


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """
    Users from a file of C{name:password} lines (C{#} starts a comment),
    each password in clear or hashed (see the module's docstring).

    The file is read once, when the checker is made: a bad file stops
    start-up, and a change takes a restart.  Every check, right or wrong,
    known name or not, computes one hash of the cost of the file's own
    (clear-text entries are for development: they cost a hash all the
    same, and the service warns about them).  Hashes wait for a thread in
    a L{HashingPool}, sooner for credentials with a lower C{priority}
    attribute (L{BasicAuth} gives their address's recent failures).
    Remembering good credentials, so that Basic auth does not pay a hash
    per request, is L{BasicAuth}'s.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: str, *, hasher: Hasher = PasswordHash.derive) -> None:
        self.path = path
        self._hasher = hasher
        self._run: Callable[[Callable[[], bool], float], Deferred[bool]] = _unbound
        self._entries: dict[bytes, _Entry] = {}
        try:
            with open(path, "rb") as f:
                content = f.read()
            lines = content.decode("utf-8").splitlines()
        except OSError as e:
            raise PasswordFileError(f"cannot read the password file {path}: {e.strerror}") from e
        except UnicodeDecodeError:
            raise PasswordFileError(f"the password file {path} is not UTF-8 text") from None
        found: dict[bytes, PasswordHash | bytes] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not name:
                raise PasswordFileError(f"{path}, line {number}: not a user:password line")
            try:
                found[name.encode("utf-8")] = (
                    PasswordHash.parse(stored) if isHashed(stored) else stored.encode("utf-8")
                )
            except (ValueError, TypeError):
                raise PasswordFileError(f"{path}, line {number}: malformed password hash") from None
        if not found:
            raise PasswordFileError(f"the password file {path} names no user")
        # A name the file does not hash costs the hash of one of its hashed
        # users, chosen by the name (so always the same for a name, and each
        # cost as often as the file has it), with a key of the file's own.
        hashes = [h for h in found.values() if isinstance(h, PasswordHash)]
        self._costs = [h.dummy() for h in hashes] or [_DEFAULT_COST.dummy()]
        self._costKey = hashlib.sha256(b"morpheo-storage password costs\0" + content).digest()
        for user, password in found.items():
            if isinstance(password, PasswordHash):
                self._entries[user] = _Entry(password)
            else:
                self._entries[user] = _Entry(self._costFor(user), password)

    def _costFor(self, user: bytes) -> PasswordHash:
        choice = hmac.new(self._costKey, user, hashlib.sha256).digest()
        return self._costs[int.from_bytes(choice[:8], "big") % len(self._costs)]

    def useHashing(self, hashing: HashingPool) -> None:
        """Compute hashes in C{hashing} (the service shares one among its checkers)."""
        self._run = hashing.run

    def useThreadPool(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        """Compute hashes in C{pool}, a few at a time (a L{HashingPool} of its own)."""
        self.useHashing(HashingPool(reactor, pool))

    @property
    def users(self) -> list[str]:
        return sorted(u.decode("utf-8") for u in self._entries)

    @property
    def clearTextUsers(self) -> list[str]:
        """The users whose password the file holds in clear."""
        return sorted(u.decode("utf-8") for u, e in self._entries.items() if e.clear is not None)

    def costs(self) -> Counter[tuple[str, tuple[int, ...]]]:
        """How many of the file's users cost each (scheme, parameters)."""
        return Counter((e.work.scheme, e.work.params) for e in self._entries.values())

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        user: bytes = credentials.username
        password: bytes = credentials.password
        entry = self._entries.get(user)
        if entry is None:
            entry = _Entry(self._costFor(user), known=False)
        hasher = self._hasher

        def check() -> bool:
            # Computed whatever the entry, used or not: it is the time a check takes.
            derived = hasher(entry.work, password)
            if entry.clear is not None:
                return hmac.compare_digest(password, entry.clear)
            return hmac.compare_digest(derived, entry.work.digest) and entry.known

        def decide(ok: bool) -> bytes:
            if not ok:
                raise UnauthorizedLogin("wrong user name or password")
            return user

        priority = getattr(credentials, "priority", 0.0)
        return self._run(check, priority).addCallback(decide)


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
    "HashingPool",
    "LoginsBusy",
    "PasswordFileChecker",
    "PasswordFileError",
    "PasswordHash",
    "UsersChecker",
    "hashPassword",
    "verifyPassword",
]
