"""
What users of an object store expect, through the real server: download
headers, ranges byte for byte, conditional requests, HEAD, stated digests,
pagination that loses nothing while uploads arrive, filters, DELETE.

Every test runs twice: on the local blob store, and on S3 (a SeaweedFS
started for the tests), where the bucket's objects stand for the files.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient

from tests.integration.helpers import (
    BOUNDARY,
    FORM_HEADERS,
    assertClean,
    assertError,
    form,
    header,
    jsonOf,
    newUUID,
    post,
    raw,
    sendForm,
    upload,
    uploadFields,
)
from tests.integration.servers import Server


def filePart(name: str, data: bytes, filename: str, ctype: str, extra: str = "") -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n{extra}\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


def textParts(*fields: tuple[str, str]) -> bytes:
    return b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields
    )


END = f"--{BOUNDARY}--\r\n".encode()


async def uploadData(http: HTTPClient, server: Server, data: bytes, **extra: str) -> Any:
    return await upload(http, server, "data", data, **extra)


@pytest.fixture(params=["local", "s3"])
def blobStore(request: pytest.FixtureRequest) -> str:
    """Every test runs on the local blob store, then on S3."""
    name: str = request.param
    return name


@pytest.fixture
def server(request: pytest.FixtureRequest, server: Server, blobStore: str) -> Server:
    """The session's server on the local store, or the one on S3."""
    if blobStore == "local":
        return server
    s3Server: Server = request.getfixturevalue("s3Server")
    return s3Server


@pytest.fixture(scope="module")
def bigBlob() -> bytes:
    return os.urandom(20 * 1024 * 1024 + 123)


@pytest_twisted.ensureDeferred
async def test_download_headers(http, server):
    data = os.urandom(5000)
    body = (
        textParts(("size", str(len(data))))
        + filePart("blob", data, "données.tar.gz", "application/x-tar")
        + END
    )
    r = await sendForm(http, server, "/data", body)
    assert r.code == 201
    created = await jsonOf(r)
    sha = hashlib.sha256(data).hexdigest()
    digest = "sha-256=:" + base64.b64encode(bytes.fromhex(sha)).decode() + ":"
    assert r.headers.getRawHeaders(b"repr-digest") == [digest.encode()]
    response, content = await raw(server, "GET", f"/data/{created['uuid']}/blob")
    assert response.code == 200 and content == data
    assert header(response, "etag") == f'"{sha}"'
    assert header(response, "content-length") == "5000"
    assert header(response, "content-type") == "application/x-tar"
    assert header(response, "content-disposition") == (
        "attachment; filename=\"donn_es.tar.gz\"; filename*=UTF-8''donn%C3%A9es.tar.gz"
    )
    assert (header(response, "last-modified") or "").endswith(" GMT")
    assert header(response, "repr-digest") == digest
    assert header(response, "accept-ranges") == "bytes"


@pytest_twisted.ensureDeferred
async def test_model_content_type_defaults_to_octet_stream(http, server):
    r = await post(http, server, "algo", b"a")
    algo = (await jsonOf(r))["uuid"]
    r = await http.post(
        f"{server.url}/model?algo={algo}",
        data=b"model",
        auth=server.auth,
        headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
    )
    model = (await jsonOf(r))["uuid"]
    response, content = await raw(server, "GET", f"/model/{model}/blob")
    assert content == b"model"
    assert header(response, "content-type") == "application/octet-stream"
    assert header(response, "content-disposition") == f'attachment; filename="{model}"'


def curlHeaders(server: Server, *args: str) -> dict[str, str]:
    """The response headers curl sees (lower-cased names), as the server sent them."""
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-u",
            f"{server.user}:{server.password}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line.rstrip("\r") for line in out.split("\n")]
    headers = {"status": lines[0].split()[1]}
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        if sep:
            headers[name.lower()] = value
    return headers


@pytest.mark.parametrize("suffix", ["", "/blob"])
@pytest_twisted.ensureDeferred
async def test_head_has_the_headers_and_no_body(http, server, suffix):
    created = await uploadData(http, server, os.urandom(3000))
    url = f"{server.url}/data/{created['uuid']}{suffix}"
    get = curlHeaders(server, url)
    head = curlHeaders(server, "-I", url)
    for volatile in ("date",):
        get.pop(volatile), head.pop(volatile)
    assert head == get
    assert head["status"] == "200" and int(head["content-length"]) > 0
    response, content = await raw(server, "HEAD", url[len(server.url) :])
    assert response.code == 200 and content == b""


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=0-0",
        "bytes=1000-1999",
        "bytes=-1048576",
        "bytes=20971000-",
        "bytes=-1",
        "bytes=5-5000000000",
    ],
)
@pytest_twisted.ensureDeferred
async def test_single_range_byte_for_byte(http, server, bigBlob, spec):
    created = await _bigUploaded(http, server, bigBlob)
    response, content = await raw(server, "GET", f"/data/{created['uuid']}/blob", {"Range": spec})
    size = len(bigBlob)
    first, _, last = spec[6:].partition("-")
    if first == "":
        start, end = size - int(last), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    assert response.code == 206
    assert content == bigBlob[start : end + 1]
    assert header(response, "content-range") == f"bytes {start}-{end}/{size}"
    assert header(response, "content-length") == str(end - start + 1)


_bigCache: dict[int, dict] = {}


async def _bigUploaded(http, server, blob):
    if server.port not in _bigCache:
        _bigCache[server.port] = await uploadData(http, server, blob)
    return _bigCache[server.port]


@pytest_twisted.ensureDeferred
async def test_multiple_ranges(http, server, bigBlob):
    created = await _bigUploaded(http, server, bigBlob)
    spec = "bytes=0-9, 1000000-1999999, -100"
    response, content = await raw(server, "GET", f"/data/{created['uuid']}/blob", {"Range": spec})
    assert response.code == 206
    ctype = header(response, "content-type") or ""
    assert ctype.startswith("multipart/byteranges; boundary=")
    assert header(response, "content-length") == str(len(content))
    boundary = ctype.split("boundary=")[1].encode()
    parts = content.split(b"\r\n--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    size = len(bigBlob)
    expected = [(0, 9), (1000000, 1999999), (size - 100, size - 1)]
    assert len(parts[1:-1]) == 3
    for part, (start, end) in zip(parts[1:-1], expected, strict=True):
        head, _, data = part[2:].partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {start}-{end}/{size}".encode() in head
        assert data == bigBlob[start : end + 1]


@pytest_twisted.ensureDeferred
async def test_416_when_no_range_fits(http, server):
    created = await uploadData(http, server, b"0123456789")
    response, content = await raw(
        server, "GET", f"/data/{created['uuid']}/blob", {"Range": "bytes=10-"}
    )
    assert response.code == 416
    assert header(response, "content-range") == "bytes */10"
    assert b"error" in content


@pytest_twisted.ensureDeferred
async def test_if_range_gives_the_range_only_while_the_etag_holds(http, server):
    created = await uploadData(http, server, b"0123456789")
    path = f"/data/{created['uuid']}/blob"
    etag = f'"{created["sha256"]}"'
    response, content = await raw(server, "GET", path, {"Range": "bytes=2-3", "If-Range": etag})
    assert (response.code, content) == (206, b"23")
    response, content = await raw(
        server, "GET", path, {"Range": "bytes=2-3", "If-Range": '"other"'}
    )
    assert (response.code, content) == (200, b"0123456789")


@pytest.mark.parametrize("suffix", ["", "/blob"])
@pytest_twisted.ensureDeferred
async def test_if_none_match_is_304_and_if_match_412_when_stale(http, server, suffix):
    created = await uploadData(http, server, b"conditional")
    path = f"/data/{created['uuid']}{suffix}"
    etag = f'"{created["sha256"]}"'
    for method in ("GET", "HEAD"):
        response, content = await raw(server, method, path, {"If-None-Match": etag})
        assert (response.code, content) == (304, b"")
        assert header(response, "etag") == etag
        response, _ = await raw(server, method, path, {"If-None-Match": '"nope", W/"x"'})
        assert response.code == 200
    response, _ = await raw(server, "GET", path, {"If-Match": '"nope"'})
    assert response.code == 412
    response, _ = await raw(server, "GET", path, {"If-Match": etag})
    assert response.code == 200
    response, _ = await raw(server, "GET", path, {"If-Match": "*"})
    assert response.code == 200


# Stated digests


@pytest_twisted.ensureDeferred
async def test_sha256_field_that_does_not_match_stores_nothing(http, server):
    data = os.urandom(1000)
    right = hashlib.sha256(data).hexdigest()
    assert (await uploadData(http, server, data, sha256=right))["sha256"] == right
    before = server.files()
    uuid = newUUID()
    r = await post(http, server, "data", data, uuid=uuid, sha256="0" * 64)
    await assertError(r, 400, "sha256", "nothing was stored")
    assertClean(server, before)
    assert server.sql("SELECT count(*) FROM resource WHERE uuid = %s", (uuid,)) == [(0,)]


@pytest.mark.parametrize(
    "name,good,bad",
    [
        (
            "Content-MD5",
            lambda d: base64.b64encode(hashlib.md5(d).digest()).decode(),
            lambda d: base64.b64encode(hashlib.md5(d + b"x").digest()).decode(),
        ),
        (
            "Repr-Digest",
            lambda d: "sha-256=:" + base64.b64encode(hashlib.sha256(d).digest()).decode() + ":",
            lambda d: "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":",
        ),
        (
            "Repr-Digest",
            lambda d: "sha-512=:" + base64.b64encode(hashlib.sha512(d).digest()).decode() + ":",
            lambda d: "sha-512=:" + base64.b64encode(hashlib.sha512(b"").digest()).decode() + ":",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_stated_digests_of_models_and_blob_parts(http, server, name, good, bad):
    data = os.urandom(6 * 1024 * 1024)
    r = await post(http, server, "algo", b"a")
    algo = (await jsonOf(r))["uuid"]
    before = server.files()
    r = await http.post(
        f"{server.url}/model?algo={algo}",
        data=data,
        auth=server.auth,
        headers={name.encode(): [bad(data).encode()]},
    )
    await assertError(r, 400, "does not match")
    assertClean(server, before)
    r = await http.post(
        f"{server.url}/model?algo={algo}",
        data=data,
        auth=server.auth,
        headers={name.encode(): [good(data).encode()]},
    )
    assert r.code == 201
    # The same digests as headers of a form's blob part.
    before = server.files()
    body = (
        textParts(("size", str(len(data))))
        + filePart("blob", data, "b.bin", "application/octet-stream", f"{name}: {bad(data)}\r\n")
        + END
    )
    r = await sendForm(http, server, "/data", body)
    await assertError(r, 400, "does not match")
    assertClean(server, before)
    body = (
        textParts(("size", str(len(data))))
        + filePart("blob", data, "b.bin", "application/octet-stream", f"{name}: {good(data)}\r\n")
        + END
    )
    r = await sendForm(http, server, "/data", body)
    assert r.code == 201


@pytest_twisted.ensureDeferred
async def test_form_level_digest_is_refused_clearly(http, server):
    r = await http.post(
        f"{server.url}/data",
        data=form(*uploadFields("data", b"x")),
        headers={**FORM_HEADERS, b"Content-MD5": [base64.b64encode(hashlib.md5(b"x").digest())]},
        auth=server.auth,
    )
    await assertError(r, 400, "sha256 field")


# Lists


@pytest_twisted.ensureDeferred
async def test_list_refuses_bad_limits_parameters_and_cursors(http, server):
    r = await http.get(f"{server.url}/data?limit=1001", auth=server.auth)
    await assertError(r, 400, "1000")
    r = await http.get(f"{server.url}/data?limit=0", auth=server.auth)
    await assertError(r, 400)
    r = await http.get(f"{server.url}/data?colour=red", auth=server.auth)
    await assertError(r, 400, "colour")
    r = await http.get(f"{server.url}/data?cursor=abc", auth=server.auth)
    await assertError(r, 400, "cursor")


@pytest_twisted.ensureDeferred
async def test_pagination_loses_and_repeats_nothing_while_uploads_arrive(http, server):
    # At least a default page (30), whatever the shared server holds already.
    for _ in range(30):
        await uploadData(http, server, os.urandom(5))
    r = await http.get(f"{server.url}/data?limit=1000", auth=server.auth)
    everything = [i["uuid"] for i in (await jsonOf(r))["items"]]
    assert 30 <= len(everything) < 1000
    seen: list[str] = []
    path = "/data?limit=7"
    pages = 0
    while path is not None:
        r = await http.get(server.url + path, auth=server.auth)
        page = await jsonOf(r)
        assert page["page"] == pages
        assert page["length"] == len(page["items"]) <= 7
        seen.extend(i["uuid"] for i in page["items"])
        # A new upload between pages lands before the cursor: never seen.
        await uploadData(http, server, b"new")
        path = page["next"]
        pages += 1
    assert seen == everything
    r = await http.get(f"{server.url}/data", auth=server.auth)
    first = await jsonOf(r)
    assert first["length"] == 30 and first["next"].startswith("/data?limit=30&cursor=")


@pytest_twisted.ensureDeferred
async def test_list_filters_by_algo_and_by_name_prefix(http, server):
    r = await post(http, server, "algo", b"a", name="fil_ter%1")
    a1 = (await jsonOf(r))["uuid"]
    r = await post(http, server, "algo", b"a", name="filXter")
    a2 = (await jsonOf(r))["uuid"]
    models = []
    for algo in (a1, a1, a2):
        r = await http.post(f"{server.url}/model?algo={algo}", data=b"m", auth=server.auth)
        models.append((await jsonOf(r))["uuid"])
    r = await http.get(f"{server.url}/model?algo={a1}", auth=server.auth)
    assert [i["uuid"] for i in (await jsonOf(r))["items"]] == [models[1], models[0]]
    r = await http.get(f"{server.url}/algo?name=fil_", auth=server.auth)
    assert [i["uuid"] for i in (await jsonOf(r))["items"]] == [a1]
    r = await http.get(f"{server.url}/algo?name=fil", auth=server.auth)
    assert {i["uuid"] for i in (await jsonOf(r))["items"]} >= {a1, a2}
    r = await http.get(f"{server.url}/data?name=x", auth=server.auth)
    await assertError(r, 400, "name")


# DELETE


@pytest_twisted.ensureDeferred
async def test_delete_answers_the_object_and_removes_its_blob(http, server):
    created = await uploadData(http, server, b"to delete")
    files = server.files()
    r = await http.delete(f"{server.url}/data/{created['uuid']}", auth=server.auth)
    assert r.code == 200
    assert await jsonOf(r) == created
    assert (await http.get(f"{server.url}/data/{created['uuid']}", auth=server.auth)).code == 404
    assert len(server.files()) == len(files) - 1
    r = await http.delete(f"{server.url}/data/{created['uuid']}", auth=server.auth)
    await assertError(r, 404)
    r = await http.delete(f"{server.url}/data/{created['uuid']}")
    await assertError(r, 401)


@pytest_twisted.ensureDeferred
async def test_delete_an_algo_in_use_is_409_naming_the_models(http, server):
    r = await post(http, server, "algo", b"a")
    algo = (await jsonOf(r))["uuid"]
    models = []
    for _ in range(2):
        r = await http.post(f"{server.url}/model?algo={algo}", data=b"m", auth=server.auth)
        models.append((await jsonOf(r))["uuid"])
    r = await http.delete(f"{server.url}/algo/{algo}", auth=server.auth)
    message = await assertError(r, 409, *models)
    assert "delete them first" in message
    for m in models:
        assert (await http.delete(f"{server.url}/model/{m}", auth=server.auth)).code == 200
    assert (await http.delete(f"{server.url}/algo/{algo}", auth=server.auth)).code == 200


@pytest_twisted.ensureDeferred
async def test_delete_with_a_stale_if_match_is_412(http, server):
    created = await uploadData(http, server, b"versioned")
    r = await http.delete(
        f"{server.url}/data/{created['uuid']}",
        auth=server.auth,
        headers={b"If-Match": [b'"stale"']},
    )
    await assertError(r, 412)
    r = await http.delete(
        f"{server.url}/data/{created['uuid']}",
        auth=server.auth,
        headers={b"If-Match": [f'"{created["sha256"]}"'.encode()]},
    )
    assert r.code == 200
