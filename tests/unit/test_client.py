"""
The client's pure parts: its command line, where it finds its URL and
login, the exit code of each answer, the paths it follows, and the
resumable upload's protocol (tus 1.0) against an in-memory tus endpoint
that loses a connection mid-chunk.  The client against a real server is
in L{tests.integration.test_client}.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import morpheo.client
from morpheo.client import (
    ChecksumMismatch,
    ClientError,
    Conflict,
    ExitCode,
    NotFound,
    StorageClient,
    Unauthorized,
    Unavailable,
    UsageError,
    findCredentials,
)
from morpheo.client._cli import parseArguments, parseSize, run
from morpheo.client._errors import errorFor

# The command line


def test_options_before_or_after_the_command() -> None:
    before = parseArguments(["--json", "--url", "http://h:1", "list", "problem", "--limit", "5"])
    after = parseArguments(["list", "problem", "--limit", "5", "--json", "--url", "http://h:1"])
    for args in (before, after):
        assert (args.command, args.kind, args.limit, args.json, args.url) == (
            "list",
            "problem",
            5,
            True,
            "http://h:1",
        )
    defaults = parseArguments(["show", "data", "u"])
    assert (defaults.json, defaults.url, defaults.retries, defaults.timeout) == (
        False,
        None,
        3,
        60.0,
    )


def test_upload_and_patch_options() -> None:
    args = parseArguments(
        ["upload", "model", "f", "--algo", "a", "--resumable", "--chunk-size", "1M"]
    )
    assert (args.algo, args.resumable, args.chunk_size) == ("a", True, 1024 * 1024)
    assert parseArguments(["upload", "data", "f", "--no-resumable"]).resumable is False
    assert parseArguments(["upload", "data", "f"]).resumable is None
    args = parseArguments(["patch", "problem", "old", "--uuid", "new", "--file", "f"])
    assert (args.uuid, args.newUuid, args.file) == ("old", "new", "f")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "required: COMMAND"),
        (["list", "bananas"], "invalid choice: 'bananas'"),
        (["show", "data"], "required: UUID"),
        (["list", "data", "--limit", "-1"], "not a count"),
        (["list", "data", "--page-size", "0"], "--page-size must be positive"),
        (["upload", "data", "f", "--chunk-size", "0"], "not a positive size"),
        (["--timeout", "0", "show", "data", "u"], "--timeout must be positive"),
        (["download", "data", "u", "--frob"], "unrecognized arguments: --frob"),
    ],
)
def test_usage_errors_are_exit_1(argv: list[str], words: str) -> None:
    with pytest.raises(UsageError) as caught:
        parseArguments(argv)
    assert words in str(caught.value)
    stderr = io.StringIO()
    assert run(argv, environ={}, stdout=io.StringIO(), stderr=stderr) == 1
    [line] = stderr.getvalue().splitlines()
    assert line.startswith("morpheo-storage-client: ") and words in line


@pytest.mark.parametrize(
    ("text", "size"),
    [("1", 1), ("64K", 65536), ("8M", 8 << 20), ("1g", 1 << 30), ("2MiB", 2 << 20)],
)
def test_sizes(text: str, size: int) -> None:
    assert parseSize(text) == size


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["upload", "data", "f", "--name", "x"], "a data has no --name"),
        (["upload", "algo", "f"], "an algo needs --name"),
        (["upload", "problem", "f", "--name", "x"], "a problem needs --description"),
        (["upload", "model", "f"], "a model needs --algo"),
        (["upload", "data", "f", "--algo", "a"], "a data has no --algo"),
        (["patch", "data", "u", "--uuid", "v"], "a data cannot be changed (only problems)"),
        (["patch", "problem", "u"], "nothing to change"),
        (["list", "data", "--algo", "a"], "data lists do not filter by algo"),
    ],
)
def test_what_the_client_refuses_before_any_request(
    argv: list[str], words: str, tmp_path: Path
) -> None:
    """Nothing listens at that URL: these are answered without a connection."""
    (tmp_path / "f").write_bytes(b"x")
    argv = [a if a != "f" else str(tmp_path / "f") for a in argv]
    stderr = io.StringIO()
    environ = {"MORPHEO_STORAGE_URL": "http://127.0.0.1:9"}
    assert run(argv, environ=environ, stdout=io.StringIO(), stderr=stderr) == 1
    assert words in stderr.getvalue()


# Credentials


def netrcFile(tmp_path: Path, text: str) -> str:
    path = tmp_path / "netrc"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_credentials_flags_then_environment_then_url_then_netrc(tmp_path: Path) -> None:
    netrc = netrcFile(tmp_path, "machine store.example login nina password fromnetrc\n")
    environ = {
        "MORPHEO_STORAGE_URL": "https://store.example/storage/",
        "MORPHEO_STORAGE_USER": "eve",
        "MORPHEO_STORAGE_PASSWORD": "fromenv",
    }
    flags = findCredentials("http://other:81", "flag", "fromflag", environ, netrc)
    assert (flags.url, flags.auth) == ("http://other:81", ("flag", "fromflag"))
    fromEnv = findCredentials(environ=environ, netrcPath=netrc)
    assert (fromEnv.url, fromEnv.auth) == ("https://store.example/storage", ("eve", "fromenv"))
    inUrl = findCredentials("http://u%40x:p%3Aw@store.example:8000", environ={}, netrcPath=netrc)
    assert (inUrl.url, inUrl.auth) == ("http://store.example:8000", ("u@x", "p:w"))
    fromNetrc = findCredentials("http://store.example:8000", environ={}, netrcPath=netrc)
    assert fromNetrc.auth == ("nina", "fromnetrc")
    # The file fills in only what is missing; another user's entry is not used.
    assert findCredentials("http://store.example", None, "given", {}, netrc).auth == (
        "nina",
        "given",
    )
    assert findCredentials("http://store.example", "nina", None, {}, netrc).auth == (
        "nina",
        "fromnetrc",
    )
    assert findCredentials("http://store.example", "zoe", None, {}, netrc).auth == ("zoe", "")


def test_netrc_default_entry_and_nowhere(tmp_path: Path) -> None:
    netrc = netrcFile(tmp_path, "machine a login x password y\ndefault login d password dp\n")
    assert findCredentials("http://b", environ={}, netrcPath=netrc).auth == ("d", "dp")
    nothing = findCredentials(environ={}, netrcPath=str(tmp_path / "none"))
    assert (nothing.url, nothing.auth) == ("http://localhost:8000", None)
    # $NETRC names the file, as for curl.
    assert findCredentials("http://a", environ={"NETRC": netrc}).auth == ("x", "y")


def test_bad_urls_and_netrc_files(tmp_path: Path) -> None:
    for url in ("ftp://host", "localhost:8000", "http://"):
        with pytest.raises(UsageError, match="http:// or https://"):
            findCredentials(url, environ={})
    netrc = netrcFile(tmp_path, "garbage here\n")
    with pytest.raises(UsageError, match="cannot read"):
        findCredentials("http://a", environ={}, netrcPath=netrc)


# Exit codes


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, UsageError, ExitCode.USAGE),
        (413, UsageError, ExitCode.USAGE),
        (416, UsageError, ExitCode.USAGE),
        (404, NotFound, ExitCode.NOT_FOUND),
        (409, Conflict, ExitCode.CONFLICT),
        (412, Conflict, ExitCode.CONFLICT),
        (401, Unauthorized, ExitCode.AUTH),
        (429, Unauthorized, ExitCode.AUTH),
        (408, Unavailable, ExitCode.UNAVAILABLE),
        (500, Unavailable, ExitCode.UNAVAILABLE),
        (503, Unavailable, ExitCode.UNAVAILABLE),
    ],
)
def test_exit_code_of_each_status(status: int, kind: type[ClientError], code: ExitCode) -> None:
    error = errorFor(status, json.dumps({"error": "the\nservice  said so"}).encode())
    assert type(error) is kind and error.exitCode == code and error.status == status
    assert str(error).startswith("the service said so")


def test_errors_that_are_not_the_services_json() -> None:
    assert str(errorFor(502, b"<html>Bad Gateway</html>")) == "the service answered 502"
    assert "MORPHEO_STORAGE_USER" in str(errorFor(401, b'{"error": "wrong"}'))
    assert ChecksumMismatch("x").exitCode is ExitCode.CHECKSUM and int(ExitCode.CHECKSUM) == 6


# The library


def test_public_names_and_no_twisted() -> None:
    assert set(morpheo.client.__all__) == {
        "ChecksumMismatch", "ClientError", "Conflict", "Credentials", "ExitCode", "IProgress",
        "NoProgress", "NotFound", "StorageClient", "TerminalProgress", "Unauthorized",
        "Unavailable", "UsageError", "findCredentials", "main",
    }  # fmt: skip
    code = (
        "import sys, morpheo.client; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('twisted', 'klein', 'txpostgres', 'botocore')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_paths_the_service_gives_stay_under_its_url() -> None:
    mounted = StorageClient("https://host/storage/")
    # The client's own routes: under the base URL, whatever they begin with.
    assert mounted._resolve("/problem?cursor=1.2") == "https://host/storage/problem?cursor=1.2"
    assert StorageClient("https://host/data")._resolve("/data/1") == "https://host/data/data/1"
    assert StorageClient("http://h:1")._resolve("/data") == "http://h:1/data"
    # What the service gives: under its mount (the base URL's end), or not
    # (a service at a proxy's prefix), or behind a proxy's prefix of its own.
    assert mounted._given("/storage/uploads/7") == "https://host/storage/uploads/7"
    assert mounted._given("/uploads/7") == "https://host/storage/uploads/7"
    behind = StorageClient("https://host/api/storage")
    assert behind._given("/storage/data?cursor=1.2") == "https://host/api/storage/data?cursor=1.2"
    assert behind._given("/data/1") == "https://host/api/storage/data/1"
    assert mounted._given("https://host/storage/uploads/7") == "https://host/storage/uploads/7"
    for follow in (mounted._resolve, mounted._given):
        with pytest.raises(Unavailable, match="another host"):
            follow("https://elsewhere/uploads/7")


class TusEndpoint:
    """
    An in-memory tus 1.0 endpoint of the shape the service's C{/uploads}
    speaks (creation, HEAD, PATCH with offsets), whose C{failAt}-th PATCH
    keeps the first half of its chunk and then loses the connection, for
    the client's resume to be seen.
    """

    def __init__(self, failAt: int | None = None) -> None:
        self.failAt = failAt
        self.patches = 0
        self.heads = 0
        self.data = bytearray()
        self.length = -1
        self.metadata: dict[str, str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "OPTIONS":
            return httpx.Response(204, headers={"Tus-Version": "1.0.0"})
        if path.startswith("/uploads"):
            assert request.headers.get("tus-resumable") == "1.0.0"
        if request.method == "POST" and path == "/uploads":
            self.length = int(request.headers["upload-length"])
            pairs = (p.split(" ") for p in request.headers["upload-metadata"].split(","))
            self.metadata = {k: base64.b64decode(v).decode() for k, v in pairs}
            headers = {"Location": "/uploads/1", "Morpheo-Resource": "/data/u1"}
            return httpx.Response(201, headers=headers)
        if request.method == "HEAD":
            self.heads += 1
            return httpx.Response(200, headers={"Upload-Offset": str(len(self.data))})
        if request.method == "PATCH":
            self.patches += 1
            assert int(request.headers["upload-offset"]) == len(self.data)
            assert request.headers["content-type"] == "application/offset+octet-stream"
            body = request.read()
            if self.patches == self.failAt:
                self.data += body[: len(body) // 2]
                raise httpx.RemoteProtocolError("connection lost", request=request)
            self.data += body
            return httpx.Response(204, headers={"Upload-Offset": str(len(self.data))})
        if request.method == "GET" and path == "/data/u1":
            assert len(self.data) == self.length
            digest = hashlib.sha256(self.data).hexdigest()
            return httpx.Response(200, json={"uuid": "u1", "size": self.length, "sha256": digest})
        return httpx.Response(404, json={"error": "no such route"})


def resumableClient(endpoint: TusEndpoint, **kwargs: Any) -> StorageClient:
    client = StorageClient(
        "http://store", transport=httpx.MockTransport(endpoint), chunkSize=1000, **kwargs
    )
    client._sleep = lambda seconds: None
    return client


def test_resumable_upload_in_chunks_resumed_after_a_lost_connection(tmp_path: Path) -> None:
    data = os.urandom(4500)
    (tmp_path / "blob.bin").write_bytes(data)
    endpoint = TusEndpoint(failAt=3)
    answer = resumableClient(endpoint).upload(
        "data", str(tmp_path / "blob.bin"), uuid="u1", resumable=True
    )
    assert bytes(endpoint.data) == data
    assert answer == {"uuid": "u1", "size": 4500, "sha256": hashlib.sha256(data).hexdigest()}
    # 1000 bytes a PATCH; the third lost after 500 of them, the rest sent from
    # there (as HEAD said), in two more.
    assert (endpoint.patches, endpoint.heads) == (5, 1)
    assert endpoint.metadata == {"kind": "data", "filename": "blob.bin", "uuid": "u1"}


def test_resumable_upload_gives_up_after_its_retries(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(os.urandom(3000))
    endpoint = TusEndpoint(failAt=1)
    endpoint.failAt = None

    def alwaysLost(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            raise httpx.ReadError("connection lost", request=request)
        return endpoint(request)

    client = StorageClient("http://store", transport=httpx.MockTransport(alwaysLost), retries=2)
    client._sleep = lambda seconds: None
    with pytest.raises(Unavailable, match="connection lost"):
        client.upload("data", str(tmp_path / "blob.bin"), resumable=True)


def test_resumable_falls_back_without_uploads(tmp_path: Path) -> None:
    """No C{Tus-Version} in the answer to OPTIONS /uploads: one multipart request."""
    data = os.urandom(100)
    (tmp_path / "blob.bin").write_bytes(data)
    seen: list[str] = []

    def plain(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST" and request.url.path == "/data":
            body = request.read()
            assert b'name="size"\r\n\r\n100\r\n' in body and data in body
            digest = hashlib.sha256(data).hexdigest()
            return httpx.Response(201, json={"uuid": "u", "size": 100, "sha256": digest})
        return httpx.Response(404, json={"error": "no such route"})

    client = StorageClient("http://store", transport=httpx.MockTransport(plain))
    assert client.upload("data", str(tmp_path / "blob.bin"), resumable=True)["uuid"] == "u"
    assert seen == ["OPTIONS /uploads", "POST /data"]


def test_an_answer_whose_sha256_is_not_the_files(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"abc")

    def corrupting(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(201, json={"uuid": "u", "size": 3, "sha256": "0" * 64})

    client = StorageClient("http://store", transport=httpx.MockTransport(corrupting))
    with pytest.raises(ChecksumMismatch, match="did the file change"):
        client.upload("data", str(tmp_path / "blob.bin"))


def test_resumable_from_the_threshold_unless_told(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(os.urandom(4500))
    endpoint = TusEndpoint()
    client = resumableClient(endpoint, resumableThreshold=4500)
    assert client.upload("data", str(tmp_path / "blob.bin"), uuid="u1")["size"] == 4500
    assert endpoint.patches == 5
    # Told not to: one POST /data, which this endpoint does not have.
    with pytest.raises(NotFound, match="no such route"):
        client.upload("data", str(tmp_path / "blob.bin"), resumable=False)
    assert endpoint.patches == 5
    small = resumableClient(TusEndpoint(), resumableThreshold=4501)
    with pytest.raises(NotFound, match="no such route"):
        small.upload("data", str(tmp_path / "blob.bin"))
