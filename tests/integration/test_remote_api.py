"""
The API on the remote blob stores, end to end and for real: a twistd server
keeping its blobs in a SeaweedFS (S3) or a fake-gcs-server (Google Cloud
Storage) started for these tests, called with treq and curl.  Uploads,
lists, metadata, downloads byte for byte, ranges, PATCH and DELETE, each
checked in the bucket too; a 1 GiB blob through S3 with the server's memory
flat; the store killed in the middle of an upload; start-up with a store
that cannot be used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from attrs import define
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from morpheo.blobstores._flow import TRANSFER_BUDGET
from tests.integration.helpers import (
    FORM_HEADERS,
    assertError,
    bigRoundTrip,
    curl,
    download,
    eventually,
    form,
    jsonOf,
    newUUID,
    renameAndReplace,
    sendForm,
    serviceAccountFile,
    upload,
    within,
)
from tests.integration.servers import (
    FakeGCS,
    SeaweedFS,
    Server,
    TokenServer,
    freePort,
    startFails,
    startServer,
)
from tests.integration.test_streaming import ALLOCATOR_SLACK

MiB = 1024 * 1024
GiB = 1024 * MiB
#: What the server may use at most, whatever the size of the blobs.
#: The most a server busy with one 1 GiB round trip may hold, whatever
#: other tests on it did before (its peak is started again first).
MAX_RSS = 128 * MiB


@define
class Remote:
    """A server on a remote store, and a look into the store's bucket."""

    name: str
    server: Server
    objects: Callable[[str], list[str]]


@pytest.fixture(params=["s3", "gc"])
def remote(request: pytest.FixtureRequest) -> Remote:
    if request.param == "s3":
        store: SeaweedFS = request.getfixturevalue("seaweedfs")
        return Remote("s3", request.getfixturevalue("s3Server"), store.objects)
    gcs: FakeGCS = request.getfixturevalue("fakeGCS")
    return Remote("gcs", request.getfixturevalue("gcServer"), gcs.objects)


def blobKey(server: Server, uuid: str) -> str:
    rows = server.sql("SELECT blob_key FROM resource WHERE uuid = %s", (uuid,))
    assert len(rows) == 1, rows
    key: str = rows[0][0]
    return key


async def inBucket(remote: Remote, key: str) -> bool:
    found = await deferToThread(remote.objects, key)
    return key in found


# End to end, on each store


@pytest_twisted.ensureDeferred
async def test_form_upload_get_list_download(http: HTTPClient, remote: Remote) -> None:
    server = remote.server
    data = os.urandom(300_000)
    uuid = newUUID()
    name = f"remote-{remote.name}-{uuid[:8]}"
    made = await upload(http, server, "problem", data, uuid=uuid, name=name)
    assert made["uuid"] == uuid and made["size"] == len(data)
    assert made["sha256"] == hashlib.sha256(data).hexdigest()
    assert await inBucket(remote, blobKey(server, uuid))

    r = await http.get(f"{server.url}/problem/{uuid}", auth=server.auth)
    assert r.code == 200
    assert await jsonOf(r) == made
    r = await http.get(f"{server.url}/problem?name={name}", auth=server.auth)
    assert [item["uuid"] for item in (await jsonOf(r))["items"]] == [uuid]

    code, body = await download(http, server, f"/problem/{uuid}/blob")
    assert code == 200 and body == data


@pytest_twisted.ensureDeferred
async def test_model_upload_and_download(http: HTTPClient, remote: Remote) -> None:
    server = remote.server
    algo = (await upload(http, server, "algo", b"#!/bin/sh\n"))["uuid"]
    data = os.urandom(1_000_000)
    r = await http.post(f"{server.url}/model?algo={algo}", data=data, auth=server.auth)
    assert r.code == 201, await treq.text_content(r)
    uuid = (await jsonOf(r))["uuid"]
    assert await inBucket(remote, blobKey(server, uuid))
    code, body = await download(http, server, f"/model/{uuid}/blob")
    assert code == 200 and body == data


@pytest_twisted.ensureDeferred
async def test_blob_of_many_parts(http: HTTPClient, remote: Remote) -> None:
    """Over the S3 multipart threshold (64 MiB) and several GCS chunks (32 MiB)."""
    server = remote.server
    data = os.urandom(70 * MiB + 12345)
    uuid = (await upload(http, server, "data", data))["uuid"]
    code, body = await download(http, server, f"/data/{uuid}/blob")
    assert code == 200 and body == data
    code, body = await download(
        http,
        server,
        f"/data/{uuid}/blob",
        headers={"Range": f"bytes={64 * MiB - 10}-{64 * MiB + 9}"},
    )
    assert code == 206 and body == data[64 * MiB - 10 : 64 * MiB + 10]


@pytest_twisted.ensureDeferred
async def test_ranges_byte_for_byte_from_the_store(http: HTTPClient, remote: Remote) -> None:
    server = remote.server
    data = os.urandom(200_000)
    uuid = (await upload(http, server, "data", data))["uuid"]
    path = f"/data/{uuid}/blob"
    r = await http.get(
        server.url + path, auth=server.auth, headers=Headers({b"Range": [b"bytes=1000-1999"]})
    )
    assert r.code == 206
    assert r.headers.getRawHeaders("content-range") == [f"bytes 1000-1999/{len(data)}"]
    assert await treq.content(r) == data[1000:2000]
    code, body = await download(http, server, path, headers={"Range": "bytes=-100"})
    assert code == 206 and body == data[-100:]
    code, body = await download(http, server, path, headers={"Range": "bytes=199990-"})
    assert code == 206 and body == data[199990:]
    r = await http.get(
        server.url + path, auth=server.auth, headers=Headers({b"Range": [b"bytes=0-9,-10"]})
    )
    assert r.code == 206
    [ctype] = r.headers.getRawHeaders("content-type")
    assert ctype.startswith("multipart/byteranges; boundary=")
    parts = (await treq.content(r)).split(b"--" + ctype.split("=", 1)[1].encode())
    assert [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts[1:-1]] == [data[:10], data[-10:]]


@pytest_twisted.ensureDeferred
async def test_patch_renames_and_replaces_the_blob(http: HTTPClient, remote: Remote) -> None:
    server = remote.server
    old = newUUID()
    await upload(http, server, "problem", os.urandom(50_000), uuid=old)
    oldKey = blobKey(server, old)
    assert await inBucket(remote, oldKey)

    new = newUUID()
    data = os.urandom(80_000)
    await renameAndReplace(http, server, old, new, data)

    newKey = blobKey(server, new)
    assert newKey != oldKey
    assert await inBucket(remote, newKey)
    assert not await inBucket(remote, oldKey)
    code, _ = await download(http, server, f"/problem/{old}")
    assert code == 404
    code, body = await download(http, server, f"/problem/{new}/blob")
    assert code == 200 and body == data


@pytest_twisted.ensureDeferred
async def test_patch_rename_keeps_the_blob(http: HTTPClient, remote: Remote) -> None:
    server = remote.server
    old, new = newUUID(), newUUID()
    data = os.urandom(10_000)
    await upload(http, server, "problem", data, uuid=old)
    key = blobKey(server, old)
    r = await sendForm(http, server, f"/problem/{old}", form(("uuid", new)), "PATCH")
    assert r.code == 200, await treq.text_content(r)
    assert blobKey(server, new) == key and await inBucket(remote, key)
    code, body = await download(http, server, f"/problem/{new}/blob")
    assert code == 200 and body == data


@pytest_twisted.ensureDeferred
async def test_delete_removes_the_object(http: HTTPClient, remote: Remote) -> None:
    server = remote.server
    uuid = (await upload(http, server, "algo", os.urandom(20_000)))["uuid"]
    key = blobKey(server, uuid)
    assert await inBucket(remote, key)
    r = await http.delete(f"{server.url}/algo/{uuid}", auth=server.auth)
    assert r.code == 200, await treq.text_content(r)
    assert (await jsonOf(r))["uuid"] == uuid
    assert not await inBucket(remote, key)
    code, _ = await download(http, server, f"/algo/{uuid}/blob")
    assert code == 404
    assert server.sql("SELECT uuid FROM resource WHERE uuid = %s", (uuid,)) == []


@pytest_twisted.ensureDeferred
async def test_ready_names_the_store(http: HTTPClient, remote: Remote) -> None:
    r = await http.get(f"{remote.server.url}/ready")
    assert r.code == 200
    assert (await jsonOf(r))["blobstore"] == "ok"
    assert f"(blob store: {remote.name})" in remote.server.log()


# 1 GiB through S3


def test_1GiB_up_and_down_through_s3_with_flat_memory(
    s3Server: Server, seaweedfs: SeaweedFS, bigFile: tuple[str, str]
) -> None:
    """
    The server is the session's, so its peak so far is other tests' too:
    it is started again from what the server holds before the round trip,
    which may grow the server by one transfer's share of the store's memory
    budget and the allocator's slack, never by anything like the blob.
    """
    server = s3Server
    path, sha = bigFile
    before = server.resetPeakRSS()
    uuid = bigRoundTrip(server, path, sha, GiB)
    assert seaweedfs.objects(blobKey(server, uuid)) == [blobKey(server, uuid)]
    assert seaweedfs.uploads(f"data/{uuid}") == []
    grown = server.peakRSS() - before
    assert grown < TRANSFER_BUDGET + ALLOCATOR_SLACK, (before, grown)
    assert server.peakRSS() < MAX_RSS, server.peakRSS()


# The store dies in the middle of an upload


class GeneratedForm:
    """
    A multipart form whose blob is C{size} generated bytes, read like a
    file by L{FileBodyProducer} (so it is sent with flow control and never
    held in memory); C{position} says how much was read so far.
    """

    def __init__(self, uuid: str, size: int) -> None:
        whole = form(("uuid", uuid), ("size", str(size)), ("blob", b"<blob>"))
        self._head, _, self._tail = whole.partition(b"<blob>")
        self._size = size
        self._block = os.urandom(MiB)
        self.length = len(self._head) + size + len(self._tail)
        self.position = 0

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = offset if whence == os.SEEK_SET else self.length + offset
        return self.position

    def read(self, n: int) -> bytes:
        out = []
        end = min(self.position + n, self.length)
        while self.position < end:
            p = self.position
            if p < len(self._head):
                piece = self._head[p:end]
            elif p < len(self._head) + self._size:
                o = p - len(self._head)
                stop = min(end - len(self._head), self._size, (o // MiB + 1) * MiB)
                piece = self._block[o % MiB : o % MiB + stop - o]
            else:
                o = p - len(self._head) - self._size
                piece = self._tail[o : o + end - p]
            out.append(piece)
            self.position += len(piece)
        return b"".join(out)

    def close(self) -> None:
        pass


def test_generated_form_is_the_form() -> None:
    """The generator the crash tests upload with makes a well-formed form."""
    body = GeneratedForm("u", 3 * MiB + 5)
    streamed = b"".join(iter(lambda: body.read(100_000), b""))
    assert len(streamed) == body.length
    blob = (body._block * 4)[: 3 * MiB + 5]
    assert streamed == form(("uuid", "u"), ("size", str(3 * MiB + 5)), ("blob", blob))


@define
class Crash:
    """A store to kill, a server on it, and how to look into the store."""

    store: SeaweedFS | FakeGCS
    server: Server
    uploads: Callable[[str], list[str]] | None


@pytest.fixture
def doomedS3(tmp_path: Any) -> Iterator[Crash]:
    store = SeaweedFS().start()
    server = startServer(str(tmp_path / "server"), *store.serverArgs(), env=store.serverEnv())
    yield Crash(store, server, store.uploads)
    server.stop()
    store.stop()


@pytest.fixture
def doomedGCS(tmp_path: Any) -> Iterator[Crash]:
    store = FakeGCS(persistent=True).start()
    server = startServer(str(tmp_path / "server"), *store.serverArgs())
    # GCS has no list of resumable upload sessions: only objects are seen.
    yield Crash(store, server, None)
    server.stop()
    store.stop()


async def startDoomedUpload(
    http: HTTPClient, crash: Crash, uuid: str, sent: int
) -> tuple[Deferred[Any], GeneratedForm]:
    """Start uploading 1 GiB; fires once C{sent} bytes are out and the
    store has begun receiving them."""
    body = GeneratedForm(uuid, GiB)
    response = http.post(
        f"{crash.server.url}/data",
        data=FileBodyProducer(body),
        headers=FORM_HEADERS,
        auth=crash.server.auth,
    )
    ended: list[object] = []

    def end(result: object) -> object:
        ended.append(result)
        return result

    response.addBoth(end)
    uploads = crash.uploads

    def streaming() -> None:
        if ended:
            raise RuntimeError(f"the upload ended before the store was killed: {ended}")
        assert body.position >= sent, f"only {body.position} bytes sent"
        assert uploads is None or uploads("data/"), "the store has not begun receiving"

    await eventually(streaming, timeout=60)
    return response, body


def noRow(server: Server, uuid: str) -> None:
    assert server.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == []


async def killMidUpload(
    http: HTTPClient, crash: Crash, sent: int, name: str
) -> tuple[SeaweedFS | FakeGCS, Server, str]:
    """
    Kill the store once an upload streams into it (its multipart upload
    the only one, where the store lists them): the client gets a 502 (or
    503) naming the store C{name}, and no row is kept.  The store, the
    server and the upload's uuid.
    """
    server = crash.server
    uuid = newUUID()
    response, _ = await startDoomedUpload(http, crash, uuid, sent)
    if crash.uploads is not None:
        assert crash.uploads("data/") == [blobKey(server, uuid)]
    await deferToThread(crash.store.kill)
    r = await within(response, 60)
    await assertError(r, (502, 503), f"blob store ({name})")
    await eventually(lambda: noRow(server, uuid))
    return crash.store, server, uuid


@pytest_twisted.ensureDeferred
async def test_s3_killed_mid_upload_leaves_nothing(http: HTTPClient, doomedS3: Crash) -> None:
    """
    SeaweedFS dies (SIGKILL) while a multipart upload streams into it: the
    client gets a 502 naming the store and no row is kept.  Restarted on
    the same data, the store holds the upload that was in progress (S3
    keeps multipart uploads until they are completed or aborted) until the
    server, which retries its clean-up, aborts it: no object, no upload.
    """
    store, server, uuid = await killMidUpload(http, doomedS3, 40 * MiB, "s3")
    assert isinstance(store, SeaweedFS)
    r = await http.get(f"{server.url}/ready")
    assert r.code == 503
    assert (await jsonOf(r))["blobstore"] == "unavailable"
    assert "not ready: the blobstore failed: S3 HeadBucket" in server.log()

    await deferToThread(store.start)

    def aborted() -> None:
        assert store.uploads("") == []

    await eventually(aborted, timeout=120)
    assert store.objects("") == []
    noRow(server, uuid)
    assert "cleaned up data/" in server.log()

    # And the service goes on once the store is back.
    made = await upload(http, server, "data", b"after the crash")
    code, data = await download(http, server, f"/data/{made['uuid']}/blob")
    assert code == 200 and data == b"after the crash"


def test_s3_killed_mid_download_cuts_the_response(tmp_path: Any, doomedS3: Crash) -> None:
    """
    SeaweedFS dies while a blob streams out: the client's response is cut
    short (fewer bytes than its Content-Length), never ended as if whole.
    """
    server, store = doomedS3.server, doomedS3.store
    size = 256 * MiB
    path = tmp_path / "blob.bin"
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    uuid = newUUID()
    p = curl(
        "-u", f"{server.user}:{server.password}", "-F", f"uuid={uuid}", "-F", f"size={size}",
        "-F", f"blob=@{path}", f"{server.url}/data",
    )  # fmt: skip
    assert f'"size": {size}' in p.stdout, p

    token = base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            f"GET /data/{uuid}/blob HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        received = s.recv(MiB)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {size}".encode() in head
        # The client stops reading: the server stops reading S3; then S3 dies.
        time.sleep(1)
        store.kill()
        got = len(body)
        try:
            while chunk := s.recv(MiB):
                got += len(chunk)
        except ConnectionResetError:
            pass  # aborted: as good as a short body
    assert 0 < got < size


@pytest_twisted.ensureDeferred
async def test_gcs_killed_mid_upload_leaves_nothing(http: HTTPClient, doomedGCS: Crash) -> None:
    """
    fake-gcs-server (on disk) dies while a resumable upload streams into
    it: a 502 naming the store, no row; restarted on the same data, no
    object.
    """
    store, server, uuid = await killMidUpload(http, doomedGCS, 72 * MiB, "gcs")
    assert isinstance(store, FakeGCS)

    await deferToThread(store.start)
    assert store.objects("") == []
    made = await upload(http, server, "data", b"after the crash")
    assert await deferToThread(store.objects, "data/") == [blobKey(server, made["uuid"])]


# Start-up with a store that cannot be used


def test_unreachable_s3_stops_startup(tmp_path: Any, seaweedfs: SeaweedFS) -> None:
    endpoint = f"http://127.0.0.1:{freePort()}"
    args = ["--blobstore", "s3", "--s3-bucket", "b", "--s3-region", "r", "--s3-endpoint", endpoint]
    line = startFails(str(tmp_path), *args, env=seaweedfs.serverEnv())
    assert "S3" in line and endpoint in line and "connect" in line, line


def test_unreachable_gcs_stops_startup(tmp_path: Any) -> None:
    endpoint = f"http://127.0.0.1:{freePort()}"
    line = startFails(
        str(tmp_path), "--blobstore", "gc", "--gc-bucket", "b", "--gc-endpoint", endpoint
    )
    assert "GCS" in line and "connect" in line, line


def test_missing_s3_bucket_stops_startup(tmp_path: Any, seaweedfs: SeaweedFS) -> None:
    args = seaweedfs.serverArgs()
    args[args.index("--s3-bucket") + 1] = "no-such-bucket"
    line = startFails(str(tmp_path), *args, env=seaweedfs.serverEnv())
    assert "no-such-bucket" in line and "no such bucket" in line, line


def test_wrong_s3_credentials_stop_startup(tmp_path: Any, seaweedfs: SeaweedFS) -> None:
    env = seaweedfs.serverEnv(AWS_SECRET_ACCESS_KEY="not-the-secret")
    line = startFails(str(tmp_path), *seaweedfs.serverArgs(), env=env)
    assert "access denied" in line, line


def test_no_s3_credentials_stop_startup(tmp_path: Any, seaweedfs: SeaweedFS) -> None:
    env = seaweedfs.serverEnv(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", HOME=str(tmp_path))
    line = startFails(str(tmp_path), *seaweedfs.serverArgs(), env=env)
    assert "no AWS credentials" in line, line


@pytest_twisted.ensureDeferred
async def test_s3_credentials_from_a_profile(
    http: HTTPClient, tmp_path: Any, seaweedfs: SeaweedFS
) -> None:
    """The AWS chain as botocore reads it: a named profile of a shared credentials file."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[morpheo]\naws_access_key_id = {seaweedfs.accessKey}\n"
        f"aws_secret_access_key = {seaweedfs.secretKey}\n"
    )
    env = seaweedfs.serverEnv(
        AWS_ACCESS_KEY_ID="",
        AWS_SECRET_ACCESS_KEY="",
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_PROFILE="morpheo",
    )
    server = startServer(str(tmp_path / "server"), *seaweedfs.serverArgs(), env=env)
    try:
        made = await upload(http, server, "data", b"signed with a profile's keys")
        code, data = await download(http, server, f"/data/{made['uuid']}/blob")
        assert code == 200 and data == b"signed with a profile's keys"
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_gcs_application_default_credentials(
    http: HTTPClient, tmp_path: Any, fakeGCS: FakeGCS, tokenServer: TokenServer
) -> None:
    """
    GOOGLE_APPLICATION_CREDENTIALS names a service account's key file: the
    service reads it through google-auth and trades a JWT signed with the
    key for an access token at the file's token endpoint (a local one
    here), also with --gc-endpoint.
    """
    credentials = serviceAccountFile(tmp_path / "service-account.json", tokenServer.url)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(credentials), "NO_GCE_CHECK": "true"}
    server = startServer(str(tmp_path / "server"), *fakeGCS.serverArgs(), env=env)
    try:
        made = await upload(http, server, "data", b"uploaded with a token")
        assert await deferToThread(fakeGCS.objects, "data/") != []
        code, data = await download(http, server, f"/data/{made['uuid']}/blob")
        assert code == 200 and data == b"uploaded with a token"
    finally:
        server.stop()
    requests = tokenServer.requests
    assert requests, "no access token was asked for"
    assert requests[0]["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert requests[0]["assertion"][0].count(".") == 2  # a signed JWT
