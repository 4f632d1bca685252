"""
Downloads that skip the service, for real: twistd servers started with
--redirect-downloads on SeaweedFS (S3, behind a proxy that keeps what
reaches the store) and on fake-gcs-server (spoken to anonymously, and with
a service account's key, whose URLs are signed), called with curl -L and
treq following redirects.  The service decides conditional requests and
answers HEAD itself; the bytes, ranges included, come from the store, and
the store refuses an expired or altered URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
import treq
from attrs import frozen
from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from tests.integration.helpers import curl, serviceAccountFile
from tests.integration.servers import (
    FakeGCS,
    RecordingProxy,
    SeaweedFS,
    Server,
    TokenServer,
    startFails,
    startServer,
)

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
FILENAME = "weights ü.tar"
CTYPE = "application/x-tar"


@frozen
class Redirecting:
    """A server redirecting to its store, and one blob stored there."""

    name: str
    server: Server
    #: What its redirects' Locations start with.
    store: str
    #: Whether the store answers with the type and file name signed in the
    #: URL (S3 does; fake-gcs-server answers with the object's own).
    labels: bool
    #: The blob's path on the server, and its ETag.
    path: str
    etag: str

    @property
    def url(self) -> str:
        return self.server.url + self.path

    @property
    def user(self) -> str:
        return f"{self.server.user}:{self.server.password}"


def storeBlob(server: Server, directory: Path) -> tuple[str, str]:
    """C{DATA} uploaded with curl as a data blob named C{FILENAME}: its path and ETag."""
    blob = directory / "weights.tar"
    blob.write_bytes(DATA)
    done = curl(
        "--fail", "-u", f"{server.user}:{server.password}", "-F", f"size={len(DATA)}",
        "-F", f"blob=@{blob};type={CTYPE};filename={FILENAME}", f"{server.url}/data",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["sha256"] == SHA
    return f"/data/{made['uuid']}/blob", f'"{SHA}"'


@pytest.fixture(scope="module")
def s3Proxy(seaweedfs: SeaweedFS) -> Iterator[RecordingProxy]:
    """The S3 gateway seen through a proxy: what clients sent the store."""
    with RecordingProxy(seaweedfs.port) as proxy:
        yield proxy


def s3Args(seaweedfs: SeaweedFS, endpoint: str, *extra: str) -> list[str]:
    return [
        "--blobstore", "s3", "--s3-bucket", seaweedfs.bucket, "--s3-region", seaweedfs.region,
        "--s3-endpoint", endpoint, "--redirect-downloads", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def s3Redirecting(
    seaweedfs: SeaweedFS, s3Proxy: RecordingProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Redirecting]:
    directory = tmp_path_factory.mktemp("s3-redirecting")
    server = startServer(
        str(directory / "server"), *s3Args(seaweedfs, s3Proxy.endpoint), env=seaweedfs.serverEnv()
    )
    try:
        path, etag = storeBlob(server, directory)
        yield Redirecting("s3", server, f"{s3Proxy.endpoint}/{seaweedfs.bucket}/", True, path, etag)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcRedirecting(
    fakeGCS: FakeGCS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Redirecting]:
    """On the emulator spoken to anonymously: its plain media URLs."""
    directory = tmp_path_factory.mktemp("gc-redirecting")
    server = startServer(str(directory / "server"), *fakeGCS.serverArgs(), "--redirect-downloads")
    try:
        path, etag = storeBlob(server, directory)
        media = f"{fakeGCS.endpoint}/download/storage/v1/b/{fakeGCS.bucket}/o/data%2F"
        yield Redirecting("gc", server, media, False, path, etag)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcSigning(fakeGCS: FakeGCS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redirecting]:
    """With a service account's key: V4 signed URLs, path-style on the emulator."""
    directory = tmp_path_factory.mktemp("gc-signing")
    with TokenServer() as tokens:
        key = serviceAccountFile(directory / "service-account.json", tokens.url)
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key), "NO_GCE_CHECK": "true"}
        server = startServer(
            str(directory / "server"), *fakeGCS.serverArgs(), "--redirect-downloads", env=env
        )
        try:
            path, etag = storeBlob(server, directory)
            store = f"{fakeGCS.endpoint}/{fakeGCS.bucket}/data/"
            yield Redirecting("gc-signed", server, store, False, path, etag)
        finally:
            server.stop()


@pytest.fixture(params=["s3", "gc", "gc-signed"])
def redirecting(request: pytest.FixtureRequest) -> Redirecting:
    fixture = {"s3": "s3Redirecting", "gc": "gcRedirecting", "gc-signed": "gcSigning"}
    found: Redirecting = request.getfixturevalue(fixture[request.param])
    return found


def curlHeaders(output: str) -> list[dict[str, str]]:
    """The header blocks of curl -D, one per response, by lower-case name."""
    blocks = []
    for block in output.replace("\r\n", "\n").strip().split("\n\n"):
        lines = block.split("\n")
        headers = {"status": lines[0].split(" ")[1]}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        blocks.append(headers)
    return blocks


# The redirect


@pytest_twisted.ensureDeferred
async def test_a_get_is_redirected_to_a_url_that_needs_no_credentials(
    http: HTTPClient, redirecting: Redirecting
) -> None:
    server = redirecting.server
    r = await http.get(redirecting.url, auth=server.auth, allow_redirects=False)
    assert r.code == 307
    assert await treq.content(r) == b""
    [location] = r.headers.getRawHeaders("location")
    assert location.startswith(redirecting.store), location
    assert r.headers.getRawHeaders("cache-control") == ["no-store"]
    query = dict(parse_qsl(urlsplit(location).query))
    if redirecting.name == "gc":
        assert "redirected to http://127.0.0.1" in server.log() and "unsigned" in server.log()
    else:
        # Signed, valid five minutes, with the type and file name.
        assert query.get("X-Amz-Expires", query.get("X-Goog-Expires")) == "300"
        assert "X-Amz-Signature" in query or "X-Goog-Signature" in query
        assert query["response-content-type"] == CTYPE
        assert query["response-content-disposition"].startswith('attachment; filename="weights')
    fetched = await http.get(location, allow_redirects=False)
    assert fetched.code == 200
    assert await treq.content(fetched) == DATA


def test_curl_follows_to_the_exact_bytes_and_type(redirecting: Redirecting, tmp_path: Path) -> None:
    out = tmp_path / "copy.tar"
    done = curl("--fail", "-L", "-u", redirecting.user, "-D", "-", "-o", str(out), redirecting.url)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA
    redirect, final = curlHeaders(done.stdout)
    assert redirect["status"] == "307" and final["status"] == "200"
    assert final["content-length"] == str(len(DATA))
    if redirecting.labels:
        head = curl("--fail", "-I", "-u", redirecting.user, redirecting.url)
        [own] = curlHeaders(head.stdout)
        assert final["content-type"] == own["content-type"] == CTYPE
        assert final["content-disposition"] == own["content-disposition"]
        assert "filename*=UTF-8''weights%20%C3%BC.tar" in own["content-disposition"]


@pytest.mark.parametrize(
    ("spec", "start", "end"), [("1000-1999", 1000, 1999), ("-100", 299_900, 299_999)]
)
def test_a_range_goes_to_the_store_which_answers_206(
    redirecting: Redirecting, tmp_path: Path, spec: str, start: int, end: int
) -> None:
    out = tmp_path / "part.bin"
    done = curl(
        "--fail", "-L", "-u", redirecting.user, "-H", f"Range: bytes={spec}",
        "-D", "-", "-o", str(out), redirecting.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    redirect, final = curlHeaders(done.stdout)
    assert (redirect["status"], final["status"]) == ("307", "206")
    assert final["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert out.read_bytes() == DATA[start : end + 1]


@pytest_twisted.ensureDeferred
async def test_treq_follows_with_a_range(http: HTTPClient, redirecting: Redirecting) -> None:
    r = await http.get(
        redirecting.url,
        auth=redirecting.server.auth,
        headers=Headers({"Range": ["bytes=5000-5099"]}),
        allow_redirects=True,
    )
    assert r.code == 206
    assert r.headers.getRawHeaders("content-range") == [f"bytes 5000-5099/{len(DATA)}"]
    assert await treq.content(r) == DATA[5000:5100]
    assert r.previousResponse is not None and r.previousResponse.code == 307


@pytest_twisted.ensureDeferred
async def test_if_none_match_is_304_from_the_service(
    http: HTTPClient, redirecting: Redirecting
) -> None:
    for follow in (False, True):
        r = await http.get(
            redirecting.url,
            auth=redirecting.server.auth,
            headers=Headers({"If-None-Match": [redirecting.etag]}),
            allow_redirects=follow,
        )
        assert (r.code, r.headers.getRawHeaders("location")) == (304, None)
        assert r.headers.getRawHeaders("etag") == [redirecting.etag]
        assert r.previousResponse is None


@pytest_twisted.ensureDeferred
async def test_what_the_store_would_judge_otherwise_is_served_by_the_service(
    http: HTTPClient, redirecting: Redirecting
) -> None:
    """The store judges by its own ETags and dates, and S3 serves one range only."""
    auth, etag = redirecting.server.auth, redirecting.etag
    cases: list[tuple[dict[str, str], int, bytes | None]] = [
        ({"If-Match": etag}, 200, DATA),
        ({"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, 200, DATA),
        ({"If-Range": etag, "Range": "bytes=10-19"}, 206, DATA[10:20]),
        ({"Range": "bytes=0-9,-10"}, 206, None),
        ({"If-Match": '"another"'}, 412, None),
    ]
    for headers, code, body in cases:
        h = Headers({k: [v] for k, v in headers.items()})
        r = await http.get(redirecting.url, auth=auth, headers=h, allow_redirects=False)
        assert (r.code, r.headers.getRawHeaders("location")) == (code, None), headers
        content = await treq.content(r)
        if body is not None:
            assert content == body, headers
        elif code == 412:
            assert f"it is now ETag {etag}" in json.loads(content)["error"]
        else:
            [ctype] = r.headers.getRawHeaders("content-type")
            assert ctype.startswith("multipart/byteranges; boundary=")
            assert DATA[:10] in content and DATA[-10:] in content


def test_head_answers_from_the_service(redirecting: Redirecting) -> None:
    done = curl("--fail", "-I", "-u", redirecting.user, redirecting.url)
    [head] = curlHeaders(done.stdout)
    assert head["status"] == "200" and "location" not in head
    assert head["etag"] == redirecting.etag
    assert (head["content-type"], head["content-length"]) == (CTYPE, str(len(DATA)))
    assert head["accept-ranges"] == "bytes"
    assert head["content-disposition"].startswith('attachment; filename="weights _.tar"')


# Credentials stay with the service


@pytest_twisted.ensureDeferred
async def test_no_client_sends_its_credentials_to_the_store(
    http: HTTPClient, s3Redirecting: Redirecting, s3Proxy: RecordingProxy, tmp_path: Path
) -> None:
    """
    treq (its auth= wraps a RedirectAgent that drops Authorization for
    another host or port) and curl (which sends -u credentials to the host
    and port it was given only) follow the redirect to the store without
    the service's Basic credentials; the presigned URL works alone.
    """
    r = await http.get(s3Redirecting.url, auth=s3Redirecting.server.auth, allow_redirects=True)
    assert r.code == 200 and await treq.content(r) == DATA
    out = tmp_path / "copy.tar"
    done = curl("--fail", "-L", "-u", s3Redirecting.user, "-o", str(out), s3Redirecting.url)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == DATA
    sent = s3Proxy.sent()
    assert sent.count(b"X-Amz-Signature=") >= 2  # the redirected GETs came through
    token = base64.b64encode(s3Redirecting.user.encode())
    assert token not in sent and b"Basic " not in sent


# The store's own checks


@pytest.fixture
def shortLived(seaweedfs: SeaweedFS, tmp_path: Path) -> Iterator[Redirecting]:
    """A server whose redirects live one second."""
    args = s3Args(seaweedfs, seaweedfs.endpoint, "--redirect-lifetime", "1")
    server = startServer(str(tmp_path / "server"), *args, env=seaweedfs.serverEnv())
    try:
        path, etag = storeBlob(server, tmp_path)
        yield Redirecting("s3", server, seaweedfs.endpoint, True, path, etag)
    finally:
        server.stop()


def test_an_expired_url_is_refused_by_the_store(shortLived: Redirecting) -> None:
    done = curl("--fail", "-u", shortLived.user, "-o", "/dev/null", "-w", "%{redirect_url}",
                shortLived.url)  # fmt: skip
    location = done.stdout
    assert "X-Amz-Expires=1&" in location, done
    time.sleep(2.5)
    expired = curl("-o", "/dev/null", "-w", "%{http_code}", location)
    assert expired.stdout == "403"
    assert "expired" in curl(location).stdout


def test_an_altered_url_is_refused_by_the_store(s3Redirecting: Redirecting) -> None:
    """The type and the file name are signed: a client cannot choose others."""
    done = curl("--fail", "-u", s3Redirecting.user, "-o", "/dev/null", "-w", "%{redirect_url}",
                s3Redirecting.url)  # fmt: skip
    location = done.stdout
    assert curl("-o", "/dev/null", "-w", "%{http_code}", location).stdout == "200"
    altered = location.replace("application%2Fx-tar", "text%2Fhtml")
    assert altered != location
    refused = curl("-w", "\n%{http_code}", altered).stdout
    assert refused.endswith("\n403") and "SignatureDoesNotMatch" in refused


# Start-up


def test_google_credentials_that_cannot_sign_stop_the_start(
    fakeGCS: FakeGCS, tmp_path: Path
) -> None:
    """
    A user's credentials (gcloud auth application-default login's, with an
    access token still valid) reach the bucket but hold no key to sign a
    URL with: the service says so at start rather than failing every
    download.
    """
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "morpheo-test",
                "client_secret": "secret",
                "refresh_token": "refresh-me",
                "token": "a-valid-token",
                "expiry": "2099-01-01T00:00:00Z",
            }
        )
    )
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(adc), "NO_GCE_CHECK": "true"}
    line = startFails(str(tmp_path), *fakeGCS.serverArgs(), "--redirect-downloads", env=env)
    assert line.startswith("morpheo-storage: cannot start: --redirect-downloads: "), line
    assert "(google.oauth2.credentials) cannot sign URLs" in line
    assert "use a service account's key (GOOGLE_APPLICATION_CREDENTIALS)" in line
    # Without --redirect-downloads, the same credentials serve.
    server = startServer(str(tmp_path / "plain"), *fakeGCS.serverArgs(), env=env)
    server.stop()
