"""
The command line: L{morpheo.tap.Options} parsed directly (as Twisted's own
C{twisted/web/test/test_tap.py} does), the plugin as twistd finds it, and
what a person sees when the service cannot start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from morpheo import tap
from morpheo.tap import Options
from tests.integration.helpers import ROOT
from tests.integration.servers import TWISTD, runTwistd, startFails

ENV_PASSWORD = "MORPHEO_STORAGE_PASSWORD"
ENV_DB_PASS = "MORPHEO_STORAGE_DB_PASS"


@pytest.fixture(autouse=True)
def _cleanEnvironment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The password variables of the caller's shell must not change the results."""
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    monkeypatch.delenv(ENV_DB_PASS, raising=False)
    yield


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def refused(*args: str) -> str:
    """The message of the L{UsageError} that C{args} must raise."""
    with pytest.raises(UsageError) as excinfo:
        parse(*args)
    return str(excinfo.value)


def closedPort() -> int:
    """A port of 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


AUTH = ("--user", "alice", "--password", "pw")


# Every option lands in the config


def test_defaults() -> None:
    """
    With only credentials, the service listens on 0.0.0.0:8000 (the
    original's address) on the local store with an embedded PostgreSQL, in
    a data directory a newcomer can write to.
    """
    config = parse(*AUTH).config()
    assert (config.host, config.port) == ("0.0.0.0", 8000)
    assert config.blobstore == "local"
    assert config.dbHost is None
    assert (config.dbPort, config.dbName, config.dbUser, config.dbPass) == (
        5432,
        "morpheo_storage",
        "storage",
        None,
    )
    assert (config.dbPoolSize, config.dbTimeout) == (4, 5.0)
    assert config.migrationsDir is None
    assert config.rollback is False
    assert config.maxBlobSize is None
    assert config.orphanGrace == 3600.0
    assert config.loginThrottle == 10
    assert config.dataDir == os.path.abspath(tap.defaultDataDir())
    assert not config.generatedPassword


def test_everyOptionReachesTheConfig(tmp_path: Path) -> None:
    """Each of the original's options is accepted and ends up in the L{StorageConfig}."""
    config = parse(
        "--host", "127.0.0.1",
        "--port", "8123",
        "--user", "alice",
        "--password", "secret",
        "--db-host", "db.example",
        "--db-port", "6543",
        "--db-name", "other_db",
        "--db-user", "bob",
        "--db-pass", "dbsecret",
        "--db-pool-size", "9",
        "--db-timeout", "2.5",
        "--db-migrations-dir", str(tmp_path / "migrations"),
        "--db-rollback",
        "--blobstore", "mock",
        "--data-dir", str(tmp_path / "data"),
        "--max-blob-size", "1024",
        "--orphan-grace", "2.5",
        "--shutdown-timeout", "7",
        "--login-throttle", "0",
    ).config()  # fmt: skip
    assert (config.host, config.port) == ("127.0.0.1", 8123)
    assert (config.user, config.password, config.generatedPassword) == ("alice", "secret", False)
    assert (config.dbHost, config.dbPort, config.dbName) == ("db.example", 6543, "other_db")
    assert (config.dbUser, config.dbPass) == ("bob", "dbsecret")
    assert (config.dbPoolSize, config.dbTimeout) == (9, 2.5)
    assert config.migrationsDir == str(tmp_path / "migrations")
    assert config.rollback is True
    assert config.blobstore == "mock"
    assert config.dataDir == str(tmp_path / "data")
    assert config.maxBlobSize == 1024
    assert (config.orphanGrace, config.shutdownTimeout) == (2.5, 7.0)
    assert config.loginThrottle == 0


@pytest.mark.parametrize("option", ["orphan-grace", "shutdown-timeout"])
@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan", ""])
def test_secondsMustBeANumberOfSeconds(option: str, value: str) -> None:
    message = refused(*AUTH, f"--{option}", value)
    assert f"--{option} must be a number of seconds" in message and repr(value) in message


def test_theBlobDirOptions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--blob-dir is resolved at parse time like --data-dir; --shared-blob-dir is a flag."""
    monkeypatch.chdir(tmp_path)
    config = parse(*AUTH).config()
    assert (config.blobDir, config.sharedBlobDir) == (None, False)
    config = parse(*AUTH, "--db-host", "db", "--blob-dir", "blobs", "--shared-blob-dir").config()
    assert (config.blobDir, config.sharedBlobDir) == (str(tmp_path / "blobs"), True)
    assert "--shared-blob-dir needs --db-host" in refused(
        *AUTH, "--blob-dir", "blobs", "--shared-blob-dir"
    )


def test_dataDirIsMadeAbsolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A relative --data-dir is resolved at parse time: twistd may change
    directory later (daemonising) and the embedded PostgreSQL needs a fixed path.
    """
    monkeypatch.chdir(tmp_path)
    assert parse(*AUTH, "--data-dir", "here").config().dataDir == str(tmp_path / "here")


def test_s3Options() -> None:
    """--blobstore s3 with its bucket and region parses, and both reach the config."""
    options = parse(*AUTH, "--blobstore", "s3", "--s3-bucket", "b", "--s3-region", "eu-west-1")
    config = options.config()
    assert (config.blobstore, config.s3Bucket, config.s3Region) == ("s3", "b", "eu-west-1")


def test_redirectOptions() -> None:
    """--redirect-downloads and --redirect-lifetime reach the config; off by default."""
    s3 = ("--blobstore", "s3", "--s3-bucket", "b", "--s3-region", "eu-west-1")
    config = parse(*AUTH, *s3).config()
    assert (config.redirectDownloads, config.redirectLifetime) == (False, None)
    config = parse(*AUTH, *s3, "--redirect-downloads").config()
    assert (config.redirectDownloads, config.downloadLifetime) == (True, 300)
    config = parse(*AUTH, *s3, "--redirect-downloads", "--redirect-lifetime", "3600").config()
    assert config.downloadLifetime == 3600


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--redirect-downloads",), "--redirect-downloads needs a store that serves downloads"),
        (("--blobstore", "mock", "--redirect-downloads"), "mock blobs are served by this service"),
        (("--redirect-lifetime", "60"), "--redirect-lifetime goes with --redirect-downloads"),
        (("--redirect-lifetime", "1.5"), "--redirect-lifetime must be a whole number of seconds"),
        (("--redirect-lifetime", "soon"), "--redirect-lifetime must be a whole number of seconds"),
        (
            ("--blobstore", "gc", "--gc-bucket", "g", "--redirect-downloads",
             "--redirect-lifetime", "700000"),
            "--redirect-lifetime must be 1 to 604800 seconds",
        ),
    ],
)  # fmt: skip
def test_redirectOptionsThatCannotWork(args: tuple[str, ...], words: str) -> None:
    assert words in refused(*AUTH, *args)


def test_gcOptions() -> None:
    """--blobstore gc with its bucket parses, and the bucket reaches the config."""
    config = parse(*AUTH, "--blobstore", "gc", "--gc-bucket", "g").config()
    assert (config.blobstore, config.gcBucket) == ("gc", "g")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0", 0),
        ("5368709120", 5368709120),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("512M", 512 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("512MB", 512 * 1024**2),
        ("5G", 5 * 1024**3),
        ("5g", 5 * 1024**3),
        ("2T", 2 * 1024**4),
    ],
)
def test_maxBlobSizeSuffixes(value: str, expected: int) -> None:
    """Sizes are bytes, or binary multiples with a k/M/G/T suffix (case and B/iB free)."""
    assert parse(*AUTH, "--max-blob-size", value).config().maxBlobSize == expected


@pytest.mark.parametrize("value", ["abc", "1.5G", "-1", "5X", "G", "", "5 G B B"])
def test_maxBlobSizeRefusesNonSizes(value: str) -> None:
    """A size that is not one is refused at start, quoting it, with examples."""
    message = refused(*AUTH, "--max-blob-size", value)
    assert "not a size" in message
    assert repr(value) in message


def test_portMustBeAnInteger() -> None:
    """
    A --port that is not a number is refused, and the message names the
    option: Twisted's own coercion error ("invalid literal for int()") does not
    say which of the twenty options was wrong.
    """
    message = refused(*AUTH, "--port", "http")
    assert "port" in message
    assert "'http'" in message


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--db-pool-size", "0", "--db-pool-size must be at least 1, not 0"),
        ("--db-pool-size", "four", "--db-pool-size must be a number, not 'four'"),
        ("--db-timeout", "0", "--db-timeout must be a positive number of seconds"),
        ("--db-timeout", "-2", "--db-timeout must be a positive number of seconds"),
        ("--db-timeout", "soon", "--db-timeout must be a positive number of seconds, not 'soon'"),
        ("--db-timeout", "inf", "--db-timeout must be a positive number of seconds"),
    ],
)
def test_poolSizeAndTimeoutAreChecked(option: str, value: str, words: str) -> None:
    assert words in refused(*AUTH, option, value)


@pytest.mark.parametrize("value", ["often", "-3", "2.5"])
def test_loginThrottleIsAWholeNumber(value: str) -> None:
    message = refused(*AUTH, "--login-throttle", value)
    assert "--login-throttle must be a whole number" in message
    assert repr(value) in message


# UsageErrors


def test_badBlobstore() -> None:
    """An unknown store is refused, listing the ones there are."""
    message = refused(*AUTH, "--blobstore", "ftp")
    assert "--blobstore must be one of local, s3, gc, mock" in message
    assert "'ftp'" in message


def test_certWithoutKey(tmp_path: Path) -> None:
    """A certificate without its key (or the reverse) cannot serve TLS."""
    assert "--cert and --key go together" in refused(*AUTH, "--cert", str(tmp_path / "c.pem"))
    assert "--cert and --key go together" in refused(*AUTH, "--key", str(tmp_path / "k.pem"))


def test_certAndKeyParse(tmp_path: Path) -> None:
    """
    --cert with --key is understood (TLS is another issue: until it lands, the
    refusal says so rather than serving plain HTTP by surprise).
    """
    with pytest.raises(UsageError, match="TLS"):
        parse(*AUTH, "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"))


@pytest.mark.parametrize(
    "extra",
    [(), ("--s3-bucket", "b"), ("--s3-region", "r")],
    ids=["neither", "bucket-only", "region-only"],
)
def test_s3NeedsBucketAndRegion(extra: tuple[str, ...]) -> None:
    """S3 cannot be used without knowing where: both bucket and region are required."""
    message = refused(*AUTH, "--blobstore", "s3", *extra)
    assert "--blobstore s3 needs --s3-bucket and --s3-region" in message


def test_gcNeedsBucket() -> None:
    """Google Cloud Storage cannot be used without a bucket."""
    assert "--blobstore gc needs --gc-bucket" in refused(*AUTH, "--blobstore", "gc")


def test_userWithoutPassword() -> None:
    """A user without a password would be an open door: refused, naming the ways to give one."""
    message = refused("--user", "alice")
    assert "--user needs a password" in message
    assert "--password-file" in message
    assert ENV_PASSWORD in message


def test_passwordWithoutUser() -> None:
    """A password with no user is a mistake to point out, not to guess around."""
    assert "a password needs --user" in refused("--password", "pw")


def test_unreadablePasswordFile(tmp_path: Path) -> None:
    """A --password-file that cannot be read is refused with the reason."""
    message = refused("--user", "alice", "--password-file", str(tmp_path / "missing"))
    assert "cannot read --password-file" in message
    assert "No such file or directory" in message


@pytest.mark.parametrize(
    "name",
    ["bad-name", "1abc", 'x"; DROP DATABASE postgres; --', "", "a" * 64, "caf\u00e9"],
)
def test_badDbName(name: str) -> None:
    """
    The embedded database is created with the name quoted into SQL: only
    plain identifiers (at most 63 characters, PostgreSQL's limit) are allowed.
    """
    message = refused(*AUTH, "--db-name", name)
    assert "--db-name" in message
    assert "not a plain identifier" in message


def test_longestDbName() -> None:
    """63 characters is PostgreSQL's identifier limit, and is accepted."""
    assert parse(*AUTH, "--db-name", "a" * 63).config().dbName == "a" * 63


# Where the password comes from


def test_passwordFile(tmp_path: Path) -> None:
    """The file's content is the password, less its final newline (as editors write it)."""
    path = tmp_path / "pw"
    path.write_text("from file  \n", encoding="utf-8")
    config = parse("--user", "alice", "--password-file", str(path)).config()
    assert config.password == "from file  "


def test_passwordFileWinsOverEnvironment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What is named on the command line wins over the environment."""
    path = tmp_path / "pw"
    path.write_text("from file\n", encoding="utf-8")
    monkeypatch.setenv(ENV_PASSWORD, "from env")
    config = parse("--user", "alice", "--password-file", str(path)).config()
    assert config.password == "from file"


def test_passwordFromEnvironment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MORPHEO_STORAGE_PASSWORD keeps the password out of process listings."""
    monkeypatch.setenv(ENV_PASSWORD, "from env")
    config = parse("--user", "alice").config()
    assert (config.user, config.password, config.generatedPassword) == ("alice", "from env", False)


def test_passwordOptionWinsOverEnvironment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit --password is not silently replaced by a leftover variable."""
    monkeypatch.setenv(ENV_PASSWORD, "from env")
    assert parse("--user", "alice", "--password", "given").config().password == "given"


def test_dbPassFromEnvironment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MORPHEO_STORAGE_DB_PASS keeps the database password out of process listings."""
    monkeypatch.setenv(ENV_DB_PASS, "dbsecret")
    assert parse(*AUTH).config().dbPass == "dbsecret"


def test_generatedPassword() -> None:
    """
    Without --user the service never runs open: a password is generated for
    the run (and flagged so the service prints it), long and different each time.
    """
    first = parse().config()
    second = parse().config()
    assert first.generatedPassword is True
    assert first.user == "morpheo"
    assert first.password is not None and second.password is not None
    assert len(first.password) >= 16
    assert first.password.strip() == first.password
    assert first.password != second.password
    assert len(set(first.password)) > 4


def test_configHidesPasswords() -> None:
    """The config's repr (it may be logged) shows neither password."""
    options = parse("--user", "alice", "--password", "topsecret", "--db-pass", "dbsecret")
    text = repr(options.config())
    assert "topsecret" not in text
    assert "dbsecret" not in text


# The plugin


def test_pluginIsDiscoverable() -> None:
    """
    twistd finds the service through Twisted's plugin system: exactly one
    IServiceMaker named morpheo-storage, using this package's Options and
    makeService.
    """
    makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "morpheo-storage"]
    assert len(makers) == 1
    maker = makers[0]
    assert maker.options is Options
    assert maker.makeService is tap.makeService
    assert maker.description


def test_pluginFoundAfterAPlainInstall(tmp_path: Path) -> None:
    """
    After a plain (not editable) install, the plugin is found in the
    installed copy: the checkout is taken off the path, so nothing else
    could provide it.
    """
    root = str(ROOT)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--target", str(target), root],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    script = (
        "import os, sys\n"
        f"sys.path = [{str(target)!r}] + [p for p in sys.path"
        f" if os.path.realpath(p or '.') != {root!r}]\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "[m] = [m for m in getPlugins(IServiceMaker) if m.tapname == 'morpheo-storage']\n"
        "import morpheo, twisted.plugins.morpheo_storage as p\n"
        "print(morpheo.__file__); print(p.__file__); print(m.options.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    morpheoFile, pluginFile, optionsModule = done.stdout.split()
    assert morpheoFile.startswith(str(target)) and pluginFile.startswith(str(target))
    assert optionsModule == "morpheo.tap"


def test_slowClientDefaults() -> None:
    config = parse(*AUTH).config()
    assert (config.headerTimeout, config.minBodyRate, config.bodyRateWindow) == (30.0, 1024, 60.0)


def test_slowClientOptions() -> None:
    config = parse(
        *AUTH, "--header-timeout", "5.5", "--min-body-rate", "4K", "--body-rate-window", "20"
    ).config()
    assert (config.headerTimeout, config.minBodyRate, config.bodyRateWindow) == (5.5, 4096, 20.0)
    off = parse(*AUTH, "--header-timeout", "0", "--min-body-rate", "0").config()
    assert (off.headerTimeout, off.minBodyRate) == (0.0, 0)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--header-timeout", "soon"), "--header-timeout must be a number of seconds"),
        (("--header-timeout", "-1"), "--header-timeout must be a number of seconds"),
        (("--min-body-rate", "fast"), "--min-body-rate must be a number of bytes a second"),
        (("--body-rate-window", "0"), "--body-rate-window must be a number of seconds above 0"),
        (("--body-rate-window", "never"), "--body-rate-window must be a number of seconds"),
    ],
)
def test_slowClientOptionsThatCannotWork(args: tuple[str, ...], words: str) -> None:
    assert words in refused(*AUTH, *args)


def test_twistdHelpListsTheOptions() -> None:
    """C{twistd morpheo-storage --help} is where a user learns the options: all are there."""
    result = subprocess.run(
        [TWISTD, "morpheo-storage", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in [
        "host", "port", "cert", "key", "user", "password", "password-file",
        "db-host", "db-port", "db-name", "db-user", "db-pass", "db-migrations-dir",
        "db-rollback", "blobstore", "data-dir", "s3-bucket", "s3-region", "gc-bucket",
        "max-blob-size", "s3-endpoint", "gc-endpoint", "redirect-downloads", "redirect-lifetime",
        "orphan-grace", "shutdown-timeout",
        "login-throttle", "blob-dir", "shared-blob-dir",
        "header-timeout", "min-body-rate", "body-rate-window",
    ]:  # fmt: skip
        assert f"--{option}" in result.stdout, option


def test_usageErrorFromTwistd(tmp_path: Path) -> None:
    """A bad command line stops twistd with a non-zero status and the reason."""
    result = runTwistd(str(tmp_path), "--blobstore", "ftp")
    assert result.returncode != 0
    assert "--blobstore must be one of" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_startupFailureIsOneClearLine(tmp_path: Path) -> None:
    """
    A database that cannot be reached at start-up stops the process with a
    non-zero status (so a supervisor or a script notices) and one line on
    stderr that says why, without a traceback: the person reading it has
    a configuration to fix, not a bug to report.
    """
    line = startFails(str(tmp_path), "--db-host", "127.0.0.1", "--db-port", str(closedPort()))
    assert "PostgreSQL" in line or "connect" in line, line


# Remote blob stores' endpoints


def test_s3Endpoint() -> None:
    """--s3-endpoint reaches the config (without a trailing slash); default: AWS."""
    s3 = ("--blobstore", "s3", "--s3-bucket", "b", "--s3-region", "us-east-1")
    assert parse(*AUTH, *s3).config().s3Endpoint is None
    config = parse(*AUTH, *s3, "--s3-endpoint", "http://127.0.0.1:8333/").config()
    assert (config.blobstore, config.s3Endpoint) == ("s3", "http://127.0.0.1:8333")
    config = parse(*AUTH, *s3, "--s3-endpoint", "https://s3.example.org/prefix").config()
    assert config.s3Endpoint == "https://s3.example.org/prefix"


def test_gcEndpoint() -> None:
    """--gc-endpoint reaches the config; default: Google Cloud Storage."""
    gc = ("--blobstore", "gc", "--gc-bucket", "g")
    assert parse(*AUTH, *gc).config().gcEndpoint is None
    config = parse(*AUTH, *gc, "--gc-endpoint", "http://localhost:4443").config()
    assert (config.blobstore, config.gcEndpoint) == ("gc", "http://localhost:4443")


@pytest.mark.parametrize("option", ["s3-endpoint", "gc-endpoint"])
@pytest.mark.parametrize(
    "value", ["127.0.0.1:8333", "ftp://host", "http://", "http://host/?x=1", "localhost"]
)
def test_endpointMustBeAnHTTPURL(option: str, value: str) -> None:
    """An endpoint that is not an http(s) URL is refused at once, naming the option."""
    message = refused(*AUTH, f"--{option}", value)
    assert f"--{option}" in message and value in message


def test_endpointHelpSaysWhereCredentialsComeFrom() -> None:
    """The options' help tells how each store finds its credentials."""
    help = " ".join(str(Options()).split())  # however it is wrapped
    assert "AWS_ACCESS_KEY_ID" in help and "instance" in help
    assert "without" in help and "credentials" in help and "Application Default" in help


def test_theResumableUploadOptions() -> None:
    """--upload-expiry and --max-open-uploads: a day and 100 unless told."""
    config = parse(*AUTH).config()
    assert (config.uploadExpiry, config.maxOpenUploads) == (86400.0, 100)
    config = parse(*AUTH, "--upload-expiry", "90", "--max-open-uploads", "3").config()
    assert (config.uploadExpiry, config.maxOpenUploads) == (90.0, 3)
    assert "--upload-expiry must be a number of seconds" in refused(*AUTH, "--upload-expiry", "x")
    assert "--max-open-uploads must be a whole number" in refused(
        *AUTH, "--max-open-uploads", "many"
    )
