"""
Credentials through twisted.cred: --auth file: with several users (hashed
and clear passwords) on a real twistd server, wrong passwords refused, the
open routes left open, and the checkers on their own.  Under attack: a
refusal takes as long whoever it names, and forty clients guessing
passwords (each from its own address) neither slow the others down nor
take the server's memory.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.python.usage import UsageError
from twisted.web.client import Agent, HTTPConnectionPool

from morpheo import hashPassword
from morpheo.tap import Options
from morpheo.web._passwords import PasswordFileChecker, UsersChecker, verifyPassword
from tests.integration.helpers import ROOT, jsonOf, sleep
from tests.integration.servers import Server, startServer

ALICE, BOB, CAROL = ("alice", "alice's secret"), ("bob", "b0b:with:colons"), ("carol", "plain text")


@pytest.fixture(scope="module")
def usersFile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_text(
        "# the users of the storage service\n"
        f"{ALICE[0]}:{hashPassword(ALICE[1])}\n"
        "\n"
        f"{BOB[0]}:{hashPassword(BOB[1], 'pbkdf2_sha256')}\n"
        f"{CAROL[0]}:{CAROL[1]}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def fileServer(tmp_path_factory: pytest.TempPathFactory, usersFile: Path):
    server = startServer(
        str(tmp_path_factory.mktemp("authserver")), "--auth", f"file:{usersFile}", credentials=False
    )
    [address] = server.addresses
    yield server, address
    server.stop()


@pytest_twisted.ensureDeferred
async def test_everyUserOfTheFile(http, fileServer) -> None:
    """Hashed (scrypt, PBKDF2) and clear passwords all work; the user's name is logged."""
    server, address = fileServer
    for user in (ALICE, BOB, CAROL):
        r = await http.get(address + "problem", auth=user)
        assert r.code == 200, user
        # Twice: the second goes through the cache of good passwords.
        r = await http.get(address + "problem", auth=user)
        assert r.code == 200, user
    log = server.log()
    assert f'{ALICE[0]} "GET /problem"' in log
    for _, password in (ALICE, BOB, CAROL):
        assert password not in log


@pytest.mark.parametrize(
    "credentials",
    [(ALICE[0], BOB[1]), (ALICE[0], ALICE[1] + "x"), ("mallory", "anything"), (CAROL[0], "")],
    ids=["other-users-password", "wrong", "unknown-user", "empty"],
)
@pytest_twisted.ensureDeferred
async def test_wrongPasswordsRefused(http, fileServer, credentials) -> None:
    _, address = fileServer
    r = await http.get(address + "problem", auth=credentials)
    assert r.code == 401
    assert (r.headers.getRawHeaders(b"www-authenticate") or [b""])[0].startswith(b"Basic ")
    assert "wrong user name or password" in (await jsonOf(r))["error"]


@pytest_twisted.ensureDeferred
async def test_openRoutesStayOpen(http, fileServer) -> None:
    _, address = fileServer
    for path in ("", "health", "ready"):
        r = await http.get(address + path)
        assert r.code == 200, path
    r = await http.get(address + "problem")
    assert r.code == 401


def test_noGeneratedPasswordWithAuth(fileServer) -> None:
    """Users from --auth are enough: no password is made up for the run."""
    server, _ = fileServer
    assert "generated" not in server.log()


def test_clearTextPasswordsAreWarnedAbout(fileServer, usersFile: Path) -> None:
    server, _ = fileServer
    assert (
        f"the password file {usersFile} holds clear-text passwords (users {CAROL[0]}):"
        " clear text is for development" in server.log()
    )


# Under attack


async def timed(http: HTTPClient, url: str, auth: tuple[str, str]) -> tuple[int, float]:
    """A GET's status and how long its whole answer took (seconds)."""
    start = time.monotonic()
    r = await http.get(url, auth=auth)
    await treq.content(r)
    return r.code, time.monotonic() - start


def clientFrom(address: str) -> HTTPClient:
    """A client whose connections come from C{address} (any of 127.0.0.0/8 is this host)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool, bindAddress=(address, 0)))


@pytest_twisted.ensureDeferred
async def test_refusalsTakeAsLongWhoeverTheyName(http, tmp_path: Path) -> None:
    """
    With real PBKDF2 hashes: a wrong password for a hashed user, for a
    clear-text user and for a name the file does not hold cost the server
    the same CPU time (medians within 25 %), and are answered as fast (the
    fastest of each within 50 %: on a busy machine wall times swing with
    whatever else runs, by 20 % even between the fastest of a dozen; they
    used to be 359 ms, 3 ms and 180 ms): timing tells no name that exists.
    """
    users = tmp_path / "users"
    users.write_text(
        f"alice:{hashPassword('a secret', 'pbkdf2_sha256')}\n"
        f"bob:{hashPassword('b secret', 'pbkdf2_sha256')}\n"
        "carol:plain text\n"
    )
    server = startServer(
        str(tmp_path / "data"), "--auth", f"file:{users}", "--login-throttle", "0",
        credentials=False,
    )  # fmt: skip
    try:
        url = server.url + "/problem"
        assert (await timed(http, url, ("alice", "a secret")))[0] == 200
        names = ["alice", "carol", "mallory"]
        answered: dict[str, list[float]] = {name: [] for name in names}
        worked: dict[str, list[float]] = {name: [] for name in names}
        for round in range(12):
            for name in names[round % 3 :] + names[: round % 3]:
                before = server.cpuSeconds()
                code, took = await timed(http, url, (name, f"guess {round}"))
                worked[name].append(server.cpuSeconds() - before)
                assert code == 401
                answered[name].append(took)
        cpu = {name: statistics.median(values) for name, values in worked.items()}
        fastest = {name: min(values) for name, values in answered.items()}
        # Each is a real hash, not a shortcut: PBKDF2's 600,000 rounds.
        assert min(cpu.values()) > 0.05, worked
        assert max(cpu.values()) <= 1.25 * min(cpu.values()), worked
        assert max(fastest.values()) <= 1.5 * min(fastest.values()), answered
    finally:
        server.stop()


@pytest.fixture
def attacked(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    users = tmp_path / "users"
    users.write_text(
        f"{ALICE[0]}:{hashPassword(ALICE[1])}\n{BOB[0]}:{hashPassword(BOB[1])}\n",
        encoding="utf-8",
    )
    yield users, tmp_path


GUESSERS = 40


async def underAttack(
    http: HTTPClient, server: Server, seconds: float = 10.0
) -> tuple[list[Counter[int]], list[float], tuple[int, float]]:
    """
    L{GUESSERS} clients, each from its own address, send wrong passwords as
    fast as they are answered, for C{seconds} (L{tests.integration.guessers});
    meanwhile ALICE, whose password the server has seen, asks twice a
    second, and BOB logs in for the first time.  What each guesser was
    answered, how long ALICE's requests took, BOB's status and how long it
    took.
    """
    url = server.url + "/problem"
    assert (await timed(http, url, ALICE))[0] == 200
    guessers = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.guessers", url, str(GUESSERS), str(seconds)],
        stdout=subprocess.PIPE,
        cwd=str(ROOT),
        text=True,
    )
    try:
        assert guessers.stdout is not None
        assert await deferToThread(guessers.stdout.readline) == "guessing\n"
        await sleep(3.0)
        aliceTimes: list[float] = []
        bob: tuple[int, float] | None = None
        while guessers.poll() is None and len(aliceTimes) < 2 * (seconds - 4):
            code, took = await timed(http, url, ALICE)
            assert code == 200
            aliceTimes.append(took)
            if bob is None:
                bob = await timed(clientFrom("127.0.0.2"), url, BOB)
            await sleep(0.5)
        out, _ = await deferToThread(guessers.communicate, timeout=60)
    finally:
        guessers.kill()
        guessers.wait()
    assert guessers.returncode == 0
    report = json.loads(out)
    assert report["problems"] == []
    seen = [Counter({int(k): v for k, v in answers.items()}) for answers in report["answers"]]
    assert bob is not None and len(aliceTimes) >= 5, aliceTimes
    return seen, aliceTimes, bob


@pytest_twisted.ensureDeferred
async def test_guessersAreThrottledAndOthersServed(http, attacked) -> None:
    """
    Each guessing address gets its few failures a minute (401, or 503 when
    too many are being checked), then 429 with Retry-After.  The user whose
    password the server has seen is answered within a second all along; one
    who logs in for the first time, from an address that has not been
    failing, waits for the hash being computed at most, then its own.
    """
    users, tmp_path = attacked
    server = startServer(str(tmp_path / "data"), "--auth", f"file:{users}", credentials=False)
    try:
        seen, aliceTimes, bob = await underAttack(http, server)
        assert max(aliceTimes) < 1.0, aliceTimes
        assert bob[0] == 200 and bob[1] < 2.0, bob
        for answers in seen:
            assert set(answers) <= {401, 429, 503}, answers
            # 10 a minute: a burst of 10, then one more every 6 s.
            assert 1 <= answers[401] + answers[503] <= 12, answers
        total = sum(seen, Counter())
        assert total[429] > total[401] + total[503], total
        log = server.log()
        assert "Traceback" not in log and "Unhandled" not in log
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_unthrottledGuessersCannotTakeTheServer(http, attacked) -> None:
    """
    Without the throttle, the hashes still run a few at a time: guesses
    beyond the short queue are answered 503 at once, the server's memory
    stays small (a scrypt hash holds 32 MiB; eight at once, as the
    service's threads would run them, took 335 MB), and the user whose
    password the server has seen is answered within a second.
    """
    users, tmp_path = attacked
    server = startServer(
        str(tmp_path / "data"), "--auth", f"file:{users}", "--login-throttle", "0",
        credentials=False,
    )  # fmt: skip
    try:
        seen, aliceTimes, bob = await underAttack(http, server)
        assert max(aliceTimes) < 1.0, aliceTimes
        # First come, first served: checked after the short queue, or told
        # at once to come back.
        assert bob[0] == 200 or (bob[0] == 503 and bob[1] < 1.0), bob
        total = sum(seen, Counter())
        assert set(total) <= {401, 503}, total
        assert total[503] > total[401] > 0, total
        assert server.peakRSS() < 200 * 1024 * 1024, server.peakRSS()
        log = server.log()
        assert "Traceback" not in log and "Unhandled" not in log
    finally:
        server.stop()


# The pieces


def test_hashesVerify() -> None:
    for method in ("scrypt", "pbkdf2_sha256"):
        stored = hashPassword("pw", method)
        assert stored.startswith(method + "$")
        assert verifyPassword("pw", stored)
        assert not verifyPassword("pw2", stored)
    assert hashPassword("pw") != hashPassword("pw")  # salted


def test_djangoPBKDF2Format() -> None:
    """A hash written by Django's PBKDF2PasswordHasher is accepted as is."""
    assert verifyPassword(
        "secret", "pbkdf2_sha256$1000$salt$" + __import__("base64").b64encode(
            __import__("hashlib").pbkdf2_hmac("sha256", b"secret", b"salt", 1000)
        ).decode()
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_usersChecker() -> None:
    checker = UsersChecker({"alice": "pw"})
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"pw")) == b"alice"
    with pytest.raises(UnauthorizedLogin):
        await checker.requestAvatarId(UsernamePassword(b"alice", b"nope"))


@pytest.mark.parametrize(
    "content, words",
    [
        ("no separator\n", "line 1: not a user:password line"),
        ("# only a comment\n", "names no user"),
        ("alice:scrypt$12$salt$8$1$!!!\n", "line 1: malformed password hash"),
    ],
)
def test_badPasswordFileStopsTheCommandLine(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(UsageError, match=words):
        Options().parseOptions(["--auth", f"file:{path}"])
    with pytest.raises(UsageError, match="cannot read"):
        Options().parseOptions(["--auth", f"file:{tmp_path / 'missing'}"])


def test_authAndUserTogether(tmp_path: Path, usersFile: Path) -> None:
    """--user and --auth add up; twistd's other checker types work too (memory:)."""
    options = Options()
    options.parseOptions(
        [
            "--user",
            "u",
            "--password",
            "p",
            "--auth",
            f"file:{usersFile}",
            "--auth",
            "memory:dave:pw",
        ]
    )
    config = options.config()
    assert config.user == "u" and not config.generatedPassword
    assert len(config.checkers) == 2
    assert isinstance(config.checkers[0], PasswordFileChecker)
    assert config.checkers[0].users == ["alice", "bob", "carol"]


def test_passwdCommand() -> None:
    """python -m morpheo.passwd makes a line for the file, the password from stdin."""
    done = subprocess.run(
        [sys.executable, "-m", "morpheo.passwd", "erin"],
        input="pw\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    user, _, stored = done.stdout.strip().partition(":")
    assert user == "erin" and verifyPassword("pw", stored)
