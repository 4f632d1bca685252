"""
Every route of the contract, and every row of its error table, through a
real server (twistd, embedded PostgreSQL, local blobs) with treq.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient

from tests.integration.helpers import (
    BOUNDARY,
    FORM_HEADERS,
    assertClean,
    assertError,
    assertRefused,
    form,
    jsonOf,
    newAlgo,
    newUUID,
    post,
    renameAndReplace,
    sendForm,
)
from tests.integration.servers import Server

KINDS = ["algo", "data", "prediction", "problem"]


async def uploadModel(http: HTTPClient, server: Server, algo: str, data: bytes, uuid: str = ""):
    query = f"algo={algo}" + (f"&uuid={uuid}" if uuid else "")
    return await http.post(f"{server.url}/model?{query}", data=data, auth=server.auth)


# Open routes


@pytest_twisted.ensureDeferred
async def test_index_lists_routes(http, server):
    r = await http.get(server.url + "/")
    assert r.code == 200
    assert "POST /{kind}" in await jsonOf(r)


@pytest_twisted.ensureDeferred
async def test_health_needs_no_credentials(http, server):
    r = await http.get(server.url + "/health")
    assert r.code == 200
    assert await jsonOf(r) == {"status": "ok"}


# Uploads, metadata, blobs


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_multipart_upload_round_trip(http, server, kind):
    data = os.urandom(300_000)
    uuid = newUUID()
    r = await post(http, server, kind, data, uuid=uuid)
    assert r.code == 201, await treq.text_content(r)
    created = await jsonOf(r)
    assert created["uuid"] == uuid
    assert created["size"] == len(data)
    assert created["sha256"] == hashlib.sha256(data).hexdigest()
    assert isinstance(created["timestamp_upload"], int)
    expected = {"uuid", "timestamp_upload", "size", "sha256"}
    expected |= {"algo": {"name"}, "problem": {"name", "description"}}.get(kind, set())
    assert set(created) == expected

    r = await http.get(f"{server.url}/{kind}/{uuid}", auth=server.auth)
    assert await jsonOf(r) == created

    r = await http.get(f"{server.url}/{kind}/{uuid}/blob", auth=server.auth)
    assert r.code == 200
    assert await treq.content(r) == data


@pytest_twisted.ensureDeferred
async def test_upload_without_uuid_gets_one(http, server):
    r = await post(http, server, "data", b"x")
    assert r.code == 201
    uuid = (await jsonOf(r))["uuid"]
    r = await http.get(f"{server.url}/data/{uuid}", auth=server.auth)
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_fields_in_any_order_before_blob(http, server):
    data = b"problem"
    body = form(("size", "7"), ("description", "d"), ("name", "n"), ("blob", data))
    r = await sendForm(http, server, "/problem", body)
    assert r.code == 201
    assert (await jsonOf(r))["name"] == "n"


@pytest_twisted.ensureDeferred
async def test_empty_blob(http, server):
    r = await post(http, server, "data", b"")
    assert r.code == 201
    created = await jsonOf(r)
    assert created["size"] == 0
    assert created["sha256"] == hashlib.sha256(b"").hexdigest()
    r = await http.get(f"{server.url}/data/{created['uuid']}/blob", auth=server.auth)
    assert await treq.content(r) == b""


@pytest_twisted.ensureDeferred
async def test_model_upload_round_trip(http, server):
    algo = await newAlgo(http, server)
    data = os.urandom(200_000)
    uuid = newUUID()
    r = await uploadModel(http, server, algo, data, uuid)
    assert r.code == 201, await treq.text_content(r)
    created = await jsonOf(r)
    assert created == {
        "uuid": uuid,
        "timestamp_upload": created["timestamp_upload"],
        "algo": algo,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    r = await http.get(f"{server.url}/model/{uuid}/blob", auth=server.auth)
    assert await treq.content(r) == data


@pytest_twisted.ensureDeferred
async def test_list_newest_first_with_pages(http, server):
    uuids = []
    for _ in range(3):
        r = await post(http, server, "prediction", os.urandom(10))
        uuids.append((await jsonOf(r))["uuid"])
    r = await http.get(f"{server.url}/prediction?limit=2", auth=server.auth)
    page0 = await jsonOf(r)
    assert set(page0) >= {"page", "length", "items"}
    assert page0["page"] == 0 and page0["length"] == 2
    assert [i["uuid"] for i in page0["items"]] == uuids[::-1][:2]
    r = await http.get(f"{server.url}/prediction?limit=2&page=1", auth=server.auth)
    page1 = await jsonOf(r)
    assert page1["page"] == 1
    assert page1["items"][0]["uuid"] == uuids[0]


# PATCH


async def newProblem(http, server, data=b"first blob"):
    r = await post(http, server, "problem", data, name="p", description="d")
    assert r.code == 201
    return await jsonOf(r)


@pytest_twisted.ensureDeferred
async def test_patch_text_fields(http, server):
    p = await newProblem(http, server)
    r = await sendForm(
        http, server, f"/problem/{p['uuid']}", form(("description", "better")), "PATCH"
    )
    assert r.code == 200
    assert await jsonOf(r) == {**p, "description": "better"}


@pytest_twisted.ensureDeferred
async def test_patch_rename_moves_the_blob_with_it(http, server):
    p = await newProblem(http, server)
    new = newUUID()
    r = await sendForm(http, server, f"/problem/{p['uuid']}", form(("uuid", new)), "PATCH")
    assert r.code == 200
    assert (await jsonOf(r))["uuid"] == new
    assert (await http.get(f"{server.url}/problem/{p['uuid']}", auth=server.auth)).code == 404
    r = await http.get(f"{server.url}/problem/{new}/blob", auth=server.auth)
    assert await treq.content(r) == b"first blob"


@pytest_twisted.ensureDeferred
async def test_patch_replaces_blob_and_removes_the_old_one(http, server):
    p = await newProblem(http, server)
    before = server.files()
    data = os.urandom(50_000)
    new = newUUID()
    patched = await renameAndReplace(http, server, p["uuid"], new, data)
    assert patched["size"] == len(data)
    r = await http.get(f"{server.url}/problem/{new}/blob", auth=server.auth)
    assert await treq.content(r) == data
    after = server.files()
    assert len(after) == len(before)
    assert not [f for f in after if p["uuid"] in f]


@pytest_twisted.ensureDeferred
async def test_patch_to_a_taken_uuid_is_409_and_changes_nothing(http, server):
    a = await newProblem(http, server)
    b = await newProblem(http, server)
    before = server.files()
    r = await sendForm(
        http,
        server,
        f"/problem/{a['uuid']}",
        form(("uuid", b["uuid"]), ("size", "3"), ("blob", b"new")),
        "PATCH",
    )
    await assertError(r, 409, b["uuid"])
    assertClean(server, before)
    assert await jsonOf(await http.get(f"{server.url}/problem/{a['uuid']}", auth=server.auth)) == a


@pytest_twisted.ensureDeferred
async def test_patch_with_a_bad_blob_changes_nothing(http, server):
    p = await newProblem(http, server)
    before = server.files()
    r = await http.patch(
        f"{server.url}/problem/{p['uuid']}",
        data=form(("uuid", newUUID()), ("size", "10"), ("blob", b"too short")),
        headers=FORM_HEADERS,
        auth=server.auth,
    )
    await assertError(r, 400, "shorter")
    assertClean(server, before)
    r = await http.get(f"{server.url}/problem/{p['uuid']}/blob", auth=server.auth)
    assert await treq.content(r) == b"first blob"


@pytest_twisted.ensureDeferred
async def test_patch_unknown_problem_is_404(http, server):
    r = await sendForm(http, server, f"/problem/{newUUID()}", form(("name", "x")), "PATCH")
    await assertError(r, 404, "no problem")


# The error table, row by row


@pytest_twisted.ensureDeferred
async def test_400_malformed_uuid_in_path(http, server):
    r = await http.get(f"{server.url}/data/not-a-uuid", auth=server.auth)
    await assertError(r, 400, "not a valid uuid")


@pytest_twisted.ensureDeferred
async def test_400_malformed_uuid_field(http, server):
    before = server.files()
    r = await post(http, server, "data", b"abc", uuid="1234")
    await assertError(r, 400, "'1234' is not a valid uuid")
    assertClean(server, before)


@pytest_twisted.ensureDeferred
async def test_400_malformed_uuid_for_model(http, server):
    r = await uploadModel(http, server, "nope", b"m")
    await assertError(r, 400, "algo", "not a valid uuid")


@pytest_twisted.ensureDeferred
async def test_400_unknown_field(http, server):
    await assertRefused(
        http,
        server,
        "/data",
        form(("size", "1"), ("colour", "red"), ("blob", b"x")),
        400,
        "unknown field 'colour'",
    )


@pytest_twisted.ensureDeferred
async def test_400_missing_required_field(http, server):
    before = server.files()
    body = form(("description", "d"), ("size", "1"), ("blob", b"x"))
    r = await sendForm(http, server, "/problem", body)
    await assertError(r, 400, "missing required field name")
    body = form(("name", "n"), ("size", "1"))
    r = await sendForm(http, server, "/algo", body)
    await assertError(r, 400, "missing required field blob")
    assertClean(server, before)


@pytest_twisted.ensureDeferred
async def test_400_field_longer_than_255(http, server):
    before = server.files()
    r = await post(http, server, "algo", b"x", name="n" * 256)
    await assertError(r, 400, "'name' is longer than 255")
    r = await post(http, server, "algo", b"x", name="é" * 255)
    assert r.code == 201
    assert (await jsonOf(r))["name"] == "é" * 255
    await http.get(f"{server.url}/algo", auth=server.auth)
    assert server.sql("SELECT count(*) FROM resource WHERE state <> 'ready'") == [(0,)]
    assert len(server.files()) == len(before) + 1


@pytest.mark.parametrize("size", ["-1", "abc", "1.0", "", "1e3"])
@pytest_twisted.ensureDeferred
async def test_400_size_not_a_non_negative_integer(http, server, size):
    await assertRefused(
        http,
        server,
        "/data",
        form(("size", size), ("blob", b"x")),
        400,
        "not a non-negative integer",
    )


@pytest_twisted.ensureDeferred
async def test_400_blob_before_a_required_field(http, server):
    await assertRefused(
        http,
        server,
        "/algo",
        form(("name", "n"), ("blob", b"x"), ("size", "1")),
        400,
        "missing required field size before blob",
    )


@pytest_twisted.ensureDeferred
async def test_400_blob_followed_by_another_field(http, server):
    uuid = newUUID()
    await assertRefused(
        http,
        server,
        "/data",
        form(("uuid", uuid), ("size", "1"), ("blob", b"x"), ("extra", "y")),
        400,
        "blob must be the last field",
    )
    assert (await post(http, server, "data", b"x", uuid=uuid)).code == 201


@pytest_twisted.ensureDeferred
async def test_400_blob_without_closing_boundary(http, server):
    await assertRefused(
        http,
        server,
        "/data",
        form(("size", "1"), ("blob", b"x"), close=False),
        400,
        "closing boundary",
    )


@pytest.mark.parametrize(
    "actual,declared,word", [(b"abc", "4", "shorter"), (b"abcde", "4", "longer")]
)
@pytest_twisted.ensureDeferred
async def test_400_body_not_of_its_size(http, server, actual, declared, word):
    uuid = newUUID()
    await assertRefused(
        http,
        server,
        "/data",
        form(("uuid", uuid), ("size", declared), ("blob", actual)),
        400,
        word,
        declared,
    )
    assert (await post(http, server, "data", b"fine", uuid=uuid)).code == 201


@pytest_twisted.ensureDeferred
async def test_400_model_body_not_of_its_length_cannot_happen_but_big_is_fine(http, server):
    algo = await newAlgo(http, server)
    r = await uploadModel(http, server, algo, os.urandom(3 * 1024 * 1024 + 7))
    assert r.code == 201
    assert (await jsonOf(r))["size"] == 3 * 1024 * 1024 + 7


@pytest.mark.parametrize(
    "ctype", [b"application/octet-stream", b"multipart/form-data", b"text/plain; boundary=x"]
)
@pytest_twisted.ensureDeferred
async def test_400_not_multipart(http, server, ctype):
    before = server.files()
    r = await http.post(
        f"{server.url}/data",
        data=b"raw bytes",
        headers={b"Content-Type": [ctype]},
        auth=server.auth,
    )
    await assertError(r, 400, "multipart/form-data")
    assertClean(server, before)


@pytest_twisted.ensureDeferred
async def test_400_malformed_multipart(http, server):
    before = server.files()
    body = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\nbroken".encode()
    r = await sendForm(http, server, "/data", body)
    await assertError(r, 400, "multipart")
    assertClean(server, before)


@pytest.mark.parametrize(
    "path", ["/algo", "/data/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12, "/nope"]
)
@pytest.mark.parametrize("auth", [None, ("tester", "wrong"), ("someone", "s3cret-pass")])
@pytest_twisted.ensureDeferred
async def test_401_missing_or_wrong_credentials(http, server, path, auth):
    r = await http.get(server.url + path, auth=auth)
    await assertError(r, 401)
    assert r.headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic realm=")


@pytest_twisted.ensureDeferred
async def test_401_upload_leaves_nothing(http, server):
    before = server.files()
    r = await http.post(
        f"{server.url}/data",
        data=form(("size", "1"), ("blob", b"x")),
        headers=FORM_HEADERS,
        auth=("tester", "wrong"),
    )
    await assertError(r, 401)
    assertClean(server, before)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest_twisted.ensureDeferred
async def test_404_unknown_kind(http, server, method):
    r = await http.request(method, f"{server.url}/dataset", auth=server.auth, data=b"")
    await assertError(r, 404, "unknown kind 'dataset'")


@pytest.mark.parametrize("suffix", ["", "/blob"])
@pytest_twisted.ensureDeferred
async def test_404_unknown_uuid(http, server, suffix):
    uuid = newUUID()
    r = await http.get(f"{server.url}/algo/{uuid}{suffix}", auth=server.auth)
    await assertError(r, 404, uuid)


@pytest_twisted.ensureDeferred
async def test_404_model_of_unknown_algo(http, server):
    before = server.files()
    algo = newUUID()
    r = await uploadModel(http, server, algo, b"model bytes")
    await assertError(r, 404, f"no algo {algo}")
    assertClean(server, before)


@pytest_twisted.ensureDeferred
async def test_409_uuid_taken(http, server):
    uuid = newUUID()
    assert (await post(http, server, "data", b"one", uuid=uuid)).code == 201
    before = server.files()
    r = await post(http, server, "data", b"two", uuid=uuid)
    await assertError(r, 409, uuid, "already exists")
    assertClean(server, before)
    r = await http.get(f"{server.url}/data/{uuid}/blob", auth=server.auth)
    assert await treq.content(r) == b"one"


@pytest_twisted.ensureDeferred
async def test_409_model_uuid_taken(http, server):
    algo = await newAlgo(http, server)
    uuid = newUUID()
    assert (await uploadModel(http, server, algo, b"m1", uuid)).code == 201
    r = await uploadModel(http, server, algo, b"m2", uuid)
    await assertError(r, 409, uuid)


@pytest_twisted.ensureDeferred
async def test_405_wrong_method(http, server):
    r = await http.delete(f"{server.url}/health")
    await assertError(r, 405)
