"""
Credentials through twisted.cred: --auth file: with several users (hashed
and clear passwords) on a real twistd server, wrong passwords refused, the
open routes left open, and the checkers on their own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.python.usage import UsageError

from morpheo import hashPassword
from morpheo.tap import Options
from morpheo.web._passwords import PasswordFileChecker, UsersChecker, verifyPassword
from tests.integration.helpers import jsonOf
from tests.integration.servers import startServer

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
