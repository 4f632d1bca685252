"""
Logins from hostile clients: failures counted per client address (429 with
C{Retry-After}, other addresses served, the limit lifted with time), every
check costing the same hash whatever name it gives, hashes computed a few
at a time with a bounded queue (503 beyond it), good credentials remembered
for a while and identical ones checked once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from morpheo.web._auth import REMEMBER_FOR
from morpheo.web._passwords import HashingPool, PasswordFileChecker, PasswordHash
from morpheo.web._throttle import LoginThrottle, clientKey

from .harness import PASSWORD, USER, FakeReactor, ImmediatePool, Reply, Service

ATTACKER, OTHER = "192.0.2.66", "198.51.100.7"
#: Costs low enough for the unit tier, of both schemes.
PBKDF2 = ("pbkdf2_sha256", (1000,))
SCRYPT = ("scrypt", (16, 2, 1))
Cost = tuple[str, tuple[int, ...]]


class HeldPool:
    """A thread pool stand-in whose work runs only when the test says."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, Any]] = []

    def callInThreadWithCallback(self, onResult: Any, f: Any, *a: Any, **kw: Any) -> None:
        self.jobs.append((onResult, lambda: f(*a, **kw)))

    def runOne(self) -> None:
        ImmediatePool().callInThreadWithCallback(*self.jobs.pop(0))

    def runAll(self) -> None:
        while self.jobs:
            self.runOne()


class CountingHasher:
    """The real hash function, each computation's cost written down."""

    def __init__(self) -> None:
        self.costs: list[Cost] = []

    def __call__(self, hashed: PasswordHash, password: bytes) -> bytes:
        self.costs.append((hashed.scheme, hashed.params))
        return hashed.derive(password)


def hashed(password: str, cost: Cost) -> str:
    return str(PasswordHash.new(password, *cost))


def passwordFile(tmp_path: Path, users: dict[str, str]) -> str:
    path = tmp_path / "users"
    path.write_text("".join(f"{name}:{stored}\n" for name, stored in users.items()))
    return str(path)


def fileService(
    tmp_path: Path,
    users: dict[str, str],
    *,
    pool: Any = None,
    hasher: CountingHasher | None = None,
    loginThrottle: int = 0,
    concurrency: int = 2,
    queue: int = 16,
) -> tuple[Service, HashingPool]:
    """A service whose users come from a password file too."""
    reactor = FakeReactor()
    checker = PasswordFileChecker(
        passwordFile(tmp_path, users), hasher=hasher or PasswordHash.derive
    )
    threads: Any = ImmediatePool() if pool is None else pool
    hashing = HashingPool(reactor, threads, concurrency, queue)
    checker.useHashing(hashing)
    return Service(reactor=reactor, checkers=(checker,), loginThrottle=loginThrottle), hashing


class Pending:
    """A request sent, its answer collected when it comes."""

    def __init__(self, service: Service, d: Deferred[Reply]) -> None:
        self._service = service
        self._outcome: list[Reply | Failure] = []
        d.addBoth(self._outcome.append)
        for _ in range(20):
            service.flush()

    @property
    def reply(self) -> Reply | None:
        self._service.flush()
        if not self._outcome:
            return None
        outcome = self._outcome[0]
        if isinstance(outcome, Failure):
            outcome.raiseException()
        assert isinstance(outcome, Reply)
        return outcome


def send(service: Service, user: str, password: str, peer: str = ATTACKER) -> Pending:
    return Pending(service, service.send("GET", "/algo", auth=(user, password), peer=peer))


# Throttling


def test_failuresFromOneAddressAreThrottled() -> None:
    service = Service(loginThrottle=3)
    # Credentials that passed before are remembered: not a way through.
    assert service.request("GET", "/algo", peer=ATTACKER).code == 200
    for _ in range(3):
        reply = service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER)
        assert reply.code == 401
        assert (reply.header("www-authenticate") or "").startswith("Basic ")
    for auth in [(USER, "guess"), (USER, PASSWORD), ("someone", "else")]:
        reply = service.request("GET", "/algo", auth=auth, peer=ATTACKER)
        assert reply.code == 429
        assert reply.header("retry-after") == "20"  # 60 s / 3
        assert reply.error == "too many failed logins from this address: try again in 20 s"
        assert reply.header("www-authenticate") is None
    # Another address is served as before, and has its own count.
    assert service.request("GET", "/algo", peer=OTHER).code == 200
    assert service.request("GET", "/algo", auth=(USER, "guess"), peer=OTHER).code == 401


def test_theThrottleLiftsWithTime() -> None:
    service = Service(loginThrottle=3)
    for _ in range(3):
        assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 401
    service.advance(19)
    reply = service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER)
    assert (reply.code, reply.header("retry-after")) == (429, "1")
    service.advance(1)
    # One failure drained: one more guess, then waiting again.
    assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 401
    reply = service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER)
    assert (reply.code, reply.header("retry-after")) == (429, "20")
    # A whole minute: the whole allowance again.
    service.advance(60)
    for _ in range(3):
        assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 401
    assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 429
    assert service.request("GET", "/algo", peer=ATTACKER).code == 429


def test_onlyFailedLoginsCount() -> None:
    """Requests without credentials and good logins take nothing from the allowance."""
    service = Service(loginThrottle=3)
    for _ in range(10):
        assert service.request("GET", "/algo", auth=None, peer=ATTACKER).code == 401
        assert service.request("GET", "/algo", peer=ATTACKER).code == 200
    for _ in range(3):
        assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 401
    assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 429


def test_withoutThrottleNothingIsRefused() -> None:
    service = Service(loginThrottle=0)
    for _ in range(30):
        assert service.request("GET", "/algo", auth=(USER, "guess"), peer=ATTACKER).code == 401


def test_loginsCountWhileTheyAreChecked(tmp_path: Path) -> None:
    """Sending many guesses at once gains nothing: each counts as failed until it is not."""
    pool = HeldPool()
    service, _ = fileService(
        tmp_path, {"alice": hashed("right", PBKDF2)}, pool=pool, loginThrottle=3, queue=10
    )
    guesses = [send(service, "alice", f"guess {i}") for i in range(3)]
    refused = send(service, "alice", "one too many").reply
    assert refused is not None and refused.code == 429
    other = send(service, "alice", "right", peer=OTHER)
    assert all(g.reply is None for g in guesses) and other.reply is None
    pool.runAll()
    assert [g.reply.code for g in guesses if g.reply] == [401, 401, 401]
    assert other.reply is not None and other.reply.code == 200


def test_addressesAreRememberedBoundedly() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock, 2, addresses=100)
    for i in range(1000):
        throttle.attempt(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    assert throttle.retryAfter("10.0.3.231") is None  # the last, with one failure
    throttle.attempt("10.0.3.231")
    assert throttle.retryAfter("10.0.3.231") == 30
    # Drained buckets are forgotten.
    clock.advance(60)
    throttle.attempt("10.9.9.9")
    assert len(throttle) == 1


@pytest.mark.parametrize(
    ("address", "key"),
    [
        (IPv4Address("TCP", "192.0.2.1", 5000), "192.0.2.1"),
        (IPv6Address("TCP", "2001:db8::1", 5000), "2001:db8::/64"),
        (IPv6Address("TCP", "2001:db8::ffff:1234", 5000), "2001:db8::/64"),
        (IPv6Address("TCP", "2001:db8:0:1::1", 5000), "2001:db8:0:1::/64"),
        (IPv6Address("TCP", "fe80::1%eth0", 5000), "fe80::/64"),
        (IPv6Address("TCP", "::ffff:192.0.2.1", 5000), "192.0.2.1"),
        (UNIXAddress(b"/run/morpheo.sock"), "local"),
    ],
)
def test_failuresCountPerAddressAndIPv6PerSlash64(address: Any, key: str) -> None:
    class Request:
        def getClientAddress(self) -> Any:
            return address

    assert clientKey(Request()) == key  # type: ignore[arg-type]


# The same cost for every refusal


def test_everyCheckCostsOneHashOfTheFilesCost(tmp_path: Path) -> None:
    """
    A hashed user, a clear-text user and a name the file does not hold: a
    right or a wrong password, each check computes one hash, of the cost
    the file's hashes have.
    """
    hasher = CountingHasher()
    service, _ = fileService(
        tmp_path,
        {"alice": hashed("a-pw", PBKDF2), "bob": hashed("b-pw", PBKDF2), "carol": "c-pw"},
        hasher=hasher,
    )
    for (user, password), code in [
        (("mallory", "anything"), 401),
        (("alice", "wrong"), 401),
        (("carol", "wrong"), 401),
        (("carol", ""), 401),
        (("alice", "a-pw"), 200),
        (("carol", "c-pw"), 200),
    ]:
        before = len(hasher.costs)
        assert service.request("GET", "/algo", auth=(user, password)).code == code, user
        assert hasher.costs[before:] == [PBKDF2], user


def test_unknownNamesCostWhatTheFilesUsersCost(tmp_path: Path) -> None:
    """
    With users of several costs, a name the file does not hold costs one of
    them, always the same for the name, each as often as the file has it:
    no cost marks a name as unknown.
    """
    hasher = CountingHasher()
    users = {name: hashed("pw", PBKDF2) for name in ("alice", "bob", "carol")}
    users["dave"] = hashed("pw", SCRYPT)
    checker = PasswordFileChecker(passwordFile(tmp_path, users), hasher=hasher)
    checker.useHashing(HashingPool(FakeReactor(), ImmediatePool(), 1, 0))  # type: ignore[arg-type]

    def costOf(name: str) -> Cost:
        before = len(hasher.costs)
        failed: list[Failure] = []
        checker.requestAvatarId(UsernamePassword(name.encode(), b"guess")).addErrback(failed.append)
        assert failed and failed[0].check(UnauthorizedLogin)
        [cost] = hasher.costs[before:]
        return cost

    costs = [costOf(f"user{i}") for i in range(200)]
    assert costs == [costOf(f"user{i}") for i in range(200)]
    assert set(costs) == {PBKDF2, SCRYPT}
    assert 110 <= costs.count(PBKDF2) <= 190  # 3 in 4 expected: 150, sd 6
    assert checker.costs() == {PBKDF2: 3, SCRYPT: 1}


def test_clearTextUsersAreNamed(tmp_path: Path) -> None:
    checker = PasswordFileChecker(
        passwordFile(tmp_path, {"alice": hashed("pw", PBKDF2), "carol": "pw", "erin": "x"})
    )
    assert checker.clearTextUsers == ["carol", "erin"]
    # Without any hash in the file, clear text costs what morpheo.passwd writes.
    onlyClear = PasswordFileChecker(passwordFile(tmp_path, {"carol": "pw"}))
    assert onlyClear.costs() == {("scrypt", (2**15, 8, 1)): 1}


# Good credentials remembered, identical ones checked once


def test_goodCredentialsAreRememberedForAWhile(tmp_path: Path) -> None:
    hasher = CountingHasher()
    service, _ = fileService(tmp_path, {"alice": hashed("pw", PBKDF2)}, hasher=hasher)
    for _ in range(5):
        assert service.request("GET", "/algo", auth=("alice", "pw")).code == 200
    assert len(hasher.costs) == 1
    # Not a wrong password.
    for _ in range(2):
        assert service.request("GET", "/algo", auth=("alice", "pw2")).code == 401
    assert len(hasher.costs) == 3
    service.advance(REMEMBER_FOR)
    assert service.request("GET", "/algo", auth=("alice", "pw")).code == 200
    assert len(hasher.costs) == 4


def test_identicalCredentialsAreCheckedOnce(tmp_path: Path) -> None:
    """A client opening many connections at once with fresh credentials costs one hash."""
    pool, hasher = HeldPool(), CountingHasher()
    service, hashing = fileService(
        tmp_path, {"alice": hashed("pw", PBKDF2)}, pool=pool, hasher=hasher, loginThrottle=2
    )
    requests = [send(service, "alice", "pw") for _ in range(6)]
    assert len(pool.jobs) == 1 and hashing.waiting == 0
    pool.runAll()
    assert [r.reply.code for r in requests if r.reply] == [200] * 6
    assert len(hasher.costs) == 1


# A few hashes at a time


def test_hashesRunAFewAtATimeAndTheQueueIsBounded(tmp_path: Path) -> None:
    pool = HeldPool()
    service, hashing = fileService(
        tmp_path,
        {"alice": hashed("pw", PBKDF2)},
        pool=pool,
        concurrency=2,
        queue=3,
        loginThrottle=1,
    )
    checking = [send(service, "alice", f"guess {i}", peer=f"10.0.0.{i}") for i in range(5)]
    assert len(pool.jobs) == 2  # in the threads
    assert (hashing.running, hashing.waiting) == (2, 3)
    # Beyond the queue: refused at once; asking again is not the way.
    busy = send(service, "alice", "pw", peer=OTHER).reply
    assert busy is not None
    assert (busy.code, busy.header("retry-after")) == (503, "1")
    assert busy.error == "too many logins are being checked right now: try again in a second"
    again = send(service, "alice", "pw", peer=OTHER).reply
    assert again is not None and again.code == 429
    # Each hash done lets one waiting start.
    pool.runOne()
    assert (hashing.running, hashing.waiting, len(pool.jobs)) == (2, 2, 2)
    pool.runAll()
    assert [c.reply.code for c in checking if c.reply] == [401] * 5
    assert (hashing.running, hashing.waiting) == (0, 0)
    good = send(service, "alice", "pw", peer="203.0.113.1")
    pool.runAll()
    assert good.reply is not None and good.reply.code == 200


def test_addressesThatFailedWaitBehindTheOthers(tmp_path: Path) -> None:
    """
    A client that has not been failing is checked before those that have,
    and when the queue is full takes the place of the one that failed most.
    """
    pool = HeldPool()
    service, hashing = fileService(
        tmp_path,
        {"alice": hashed("pw", PBKDF2)},
        pool=pool,
        concurrency=1,
        queue=2,
        loginThrottle=10,
    )
    for peer in (ATTACKER, ATTACKER, OTHER):
        guess = send(service, "alice", "guess", peer=peer)
        pool.runAll()
        assert guess.reply is not None and guess.reply.code == 401
    running = send(service, "alice", "guess 1", peer=ATTACKER)
    bumped = send(service, "alice", "guess 2", peer=ATTACKER)
    once = send(service, "alice", "guess", peer=OTHER)
    assert (hashing.running, hashing.waiting) == (1, 2)
    honest = send(service, "alice", "pw", peer="203.0.113.1")
    assert bumped.reply is not None and bumped.reply.code == 503
    assert service.auth.throttle is not None
    assert service.auth.throttle.failures(ATTACKER) == 4  # the one bumped counts
    pool.runOne()
    assert running.reply is not None and running.reply.code == 401
    pool.runOne()
    assert honest.reply is not None and honest.reply.code == 200
    assert once.reply is None
    pool.runAll()
    assert once.reply is not None and once.reply.code == 401
