"""
Resumable uploads (C{/uploads}) against real servers, on every blob store
(the local disk, S3 on SeaweedFS, GCS on fake-gcs-server): the tus Python
client (tuspy) and curl; a PATCH cut mid-body by the test (the socket
closed), then resumed from HEAD's offset; a checksum mismatch (460); four
partial uploads concatenated; expiry with a short C{--upload-expiry};
another user's upload (404); a creation then a PATCH through a second
node on one PostgreSQL and SeaweedFS; and the server's memory over a
1 GiB upload sent as 100 MiB PATCHes and cut three times.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tusclient.client import TusClient

from morpheo import hashPassword
from tests.integration.helpers import curl, newUUID
from tests.integration.servers import SeaweedFS, Server, startServer, waitUntil

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
STORES = ["server", "s3Server", "gcServer"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def meta(**fields: str) -> str:
    return ",".join(f"{k} {b64(v)}" for k, v in fields.items())


@pytest.fixture(params=STORES)
def anyServer(request: pytest.FixtureRequest) -> Server:
    """The session's server on each blob store in turn."""
    server: Server = request.getfixturevalue(request.param)
    return server


def create(server: Server, length: int | None, **fields: str) -> requests.Response:
    headers = {**TUS, "Upload-Metadata": meta(**({"kind": "data"} | fields))}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    return requests.post(f"{server.url}/uploads", headers=headers, auth=server.auth)


def created(server: Server, length: int | None, **fields: str) -> str:
    reply = create(server, length, **fields)
    assert reply.status_code == 201, reply.text
    return f"{server.url}{reply.headers['Location']}"


def offsetOf(server: Server, url: str) -> int:
    reply = requests.head(url, headers=TUS, auth=server.auth)
    assert reply.status_code == 200, reply.status_code
    return int(reply.headers["Upload-Offset"])


def patch(server: Server, url: str, offset: int, data: bytes, **headers: str) -> requests.Response:
    head = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}
    return requests.patch(url, data=data, headers={**head, **headers}, auth=server.auth)


def _basic(server: Server) -> str:
    return base64.b64encode(f"{server.user}:{server.password}".encode()).decode()


def cutPatch(server: Server, url: str, offset: int, length: int, send: object, sent: int) -> None:
    """
    A PATCH announcing C{length} bytes whose connection the client closes
    after C{sent} of them (C{send(socket)} writes them); returns once the
    server has recorded what arrived (HEAD's offset says it).
    """
    path = url.removeprefix(server.url)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {_basic(server)}\r\n"
        "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head.encode())
        send(s)  # type: ignore[operator]
    waitUntil(lambda: offsetOf(server, url) == offset + sent, 60, "the cut PATCH recorded")


def resource(server: Server, path: str) -> dict[str, object]:
    reply = requests.get(f"{server.url}{path}", auth=server.auth)
    assert reply.status_code == 200, reply.text
    document: dict[str, object] = reply.json()
    return document


# tuspy and curl, on every store


def test_tuspyUploadCutMidPatchThenResumedFromHeadsOffset(anyServer: Server) -> None:
    server = anyServer
    blob = os.urandom(7 * MiB + 12345)
    uuid = newUUID()
    client = TusClient(
        f"{server.url}/uploads", headers={"Authorization": f"Basic {_basic(server)}"}
    )
    uploader = client.uploader(
        file_stream=io.BytesIO(blob), chunk_size=2 * MiB, metadata={"kind": "data", "uuid": uuid}
    )
    uploader.upload_chunk()
    url = uploader.url
    assert url is not None and url.startswith(f"{server.url}/uploads/")
    assert offsetOf(server, url) == 2 * MiB
    # A PATCH of 3 MiB cut after 1.5 MiB: what arrived stays.
    start = 2 * MiB
    cutPatch(
        server,
        url,
        start,
        3 * MiB,
        lambda s: s.sendall(blob[start : start + 3 * MiB // 2]),
        3 * MiB // 2,
    )
    resumed = client.uploader(file_stream=io.BytesIO(blob), url=url, chunk_size=2 * MiB)
    assert resumed.offset == start + 3 * MiB // 2
    resumed.upload()
    document = resource(server, f"/data/{uuid}")
    assert document["size"] == len(blob)
    assert document["sha256"] == hashlib.sha256(blob).hexdigest()
    got = requests.get(f"{server.url}/data/{uuid}/blob", auth=server.auth)
    assert got.content == blob
    assert requests.head(url, headers=TUS, auth=server.auth).status_code == 404


def test_curlUploadWithAChecksumMismatch(anyServer: Server, tmp_path: Path) -> None:
    server = anyServer
    first, second = os.urandom(300_000), os.urandom(200_000)
    (tmp_path / "first").write_bytes(first)
    (tmp_path / "second").write_bytes(second)
    uuid = newUUID()
    auth = f"{server.user}:{server.password}"
    made = curl(
        "-u",
        auth,
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        f"{server.url}/uploads",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        f"Upload-Length: {len(first) + len(second)}",
        "-H",
        f"Upload-Metadata: {meta(kind='data', uuid=uuid)}",
    )
    assert " 201 " in made.stdout.splitlines()[0], made.stdout
    location = re.search(r"(?im)^location: (\S+)", made.stdout)
    assert location is not None
    assert re.search(rf"(?im)^morpheo-resource: /data/{uuid}", made.stdout)
    url = f"{server.url}{location.group(1)}"
    chunk = ["-H", "Tus-Resumable: 1.0.0", "-H", "Content-Type: application/offset+octet-stream"]
    wrong = base64.b64encode(hashlib.sha1(b"not these bytes").digest()).decode()
    refused = curl(
        "-u",
        auth,
        "-X",
        "PATCH",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        url,
        *chunk,
        "-H",
        "Upload-Offset: 0",
        "-H",
        f"Upload-Checksum: sha1 {wrong}",
        "--data-binary",
        f"@{tmp_path / 'first'}",
    )
    assert refused.stdout == "460"
    assert offsetOf(server, url) == 0
    for offset, name, data in ((0, "first", first), (len(first), "second", second)):
        right = base64.b64encode(hashlib.sha1(data).digest()).decode()
        done = curl(
            "-u",
            auth,
            "-X",
            "PATCH",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            url,
            *chunk,
            "-H",
            f"Upload-Offset: {offset}",
            "-H",
            f"Upload-Checksum: sha1 {right}",
            "--data-binary",
            f"@{tmp_path / name}",
        )
        assert done.stdout == "204"
    document = resource(server, f"/data/{uuid}")
    assert document["sha256"] == hashlib.sha256(first + second).hexdigest()


def test_fourPartialUploadsConcatenated(anyServer: Server) -> None:
    server = anyServer
    parts = [os.urandom(n) for n in (3 * MiB, 1, 6 * MiB + 7, 100_000)]
    urls = []
    for part in parts:
        reply = requests.post(
            f"{server.url}/uploads",
            headers={**TUS, "Upload-Length": str(len(part)), "Upload-Concat": "partial"},
            auth=server.auth,
        )
        assert reply.status_code == 201, reply.text
        urls.append(f"{server.url}{reply.headers['Location']}")
    # Sent in parallel: in another order than they join.
    for url, part in reversed(list(zip(urls, parts, strict=True))):
        assert patch(server, url, 0, part).status_code == 204
    uuid = newUUID()
    final = requests.post(
        f"{server.url}/uploads",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": meta(kind="data", uuid=uuid),
        },
        auth=server.auth,
    )
    assert final.status_code == 201, final.text
    whole = b"".join(parts)
    assert final.json()["sha256"] == hashlib.sha256(whole).hexdigest()
    assert requests.get(f"{server.url}/data/{uuid}/blob", auth=server.auth).content == whole
    for url in urls:
        assert requests.head(url, headers=TUS, auth=server.auth).status_code == 404


def test_theIETFDraftOnTheSameResources(anyServer: Server, tmp_path: Path) -> None:
    """
    curl for the creation: it reads the interim 104 (Python's http.client,
    under requests, takes any 1xx but 100 for the final answer).
    """
    server = anyServer
    ietf = {"Upload-Draft-Interop-Version": "8"}
    blob = os.urandom(1_000_000)
    (tmp_path / "head").write_bytes(blob[:400_000])
    made = curl(
        "-u",
        f"{server.user}:{server.password}",
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        f"{server.url}/uploads",
        "-H",
        "Upload-Draft-Interop-Version: 8",
        "-H",
        "Upload-Complete: ?0",
        "-H",
        f"Upload-Metadata: {meta(kind='data')}",
        "--data-binary",
        f"@{tmp_path / 'head'}",
    )
    final = made.stdout.rsplit("HTTP/1.1 ", 1)[1]
    assert final.startswith("201"), made.stdout
    assert re.search(r"(?im)^upload-complete: \?0", final)
    location = re.search(r"(?im)^location: (\S+)", final)
    assert location is not None
    url = f"{server.url}{location.group(1)}"
    head = requests.head(url, headers=ietf, auth=server.auth)
    assert head.status_code == 204 and head.headers["Upload-Offset"] == "400000"
    done = requests.patch(
        url,
        data=blob[400_000:],
        headers={
            **ietf,
            "Upload-Complete": "?1",
            "Upload-Offset": "400000",
            "Content-Type": "application/partial-upload",
        },
        auth=server.auth,
    )
    assert done.status_code == 200 and done.headers["Upload-Complete"] == "?1"
    assert done.json()["sha256"] == hashlib.sha256(blob).hexdigest()


def test_curlSees104BeforeTheDraftsCreationAnswer(server: Server) -> None:
    made = curl(
        "-u",
        f"{server.user}:{server.password}",
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        f"{server.url}/uploads",
        "-H",
        "Upload-Draft-Interop-Version: 8",
        "-H",
        "Upload-Complete: ?1",
        "-H",
        f"Upload-Metadata: {meta(kind='data')}",
        "--data-binary",
        "whole",
    )
    codes = re.findall(r"(?m)^HTTP/1\.1 (\d{3})", made.stdout)
    assert codes[0] == "104" and codes[-1] == "201", made.stdout


# Who may see an upload


@pytest.fixture(scope="module")
def twoUsers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    users = tmp_path_factory.mktemp("uploads-auth") / "users"
    users.write_text(f"alice:{hashPassword('alice-pass')}\nbob:{hashPassword('bob-pass')}\n")
    server = startServer(
        str(tmp_path_factory.mktemp("uploads-users")), "--auth", f"file:{users}",
        "--login-throttle", "0", credentials=False,
    )  # fmt: skip
    server.user, server.password = "alice", "alice-pass"
    yield server
    server.stop()


def test_anotherUsersUploadIs404(twoUsers: Server) -> None:
    server = twoUsers
    url = created(server, 10)
    bob = ("bob", "bob-pass")
    assert requests.head(url, headers=TUS, auth=bob).status_code == 404
    head = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    assert requests.patch(url, data=b"12345", headers=head, auth=bob).status_code == 404
    assert requests.delete(url, headers=TUS, auth=bob).status_code == 404
    assert requests.head(url, headers=TUS).status_code == 401
    assert offsetOf(server, url) == 0


# Expiry


def test_unfinishedUploadsExpireAndAreSwept(tmp_path: Path) -> None:
    server = startServer(str(tmp_path / "data"), "--upload-expiry", "2", "--claim-lease", "3")
    try:
        uuid = newUUID()
        url = created(server, 1000, uuid=uuid)
        assert patch(server, url, 0, b"x" * 400).status_code == 204
        assert any(".upload-" in f for f in server.files())
        waitUntil(lambda: not any(".upload-" in f for f in server.files()), 30, "the sweep")
        assert requests.head(url, headers=TUS, auth=server.auth).status_code == 404
        assert server.sql("SELECT count(*) FROM upload") == [(0,)]
        assert created(server, 10, uuid=uuid)  # its uuid is free again
    finally:
        server.stop()


@pytest.mark.parametrize("store", ["seaweedfs", "fakeGCS"])
def test_expiredUploadsLeaveNothingInARemoteStore(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """What an expired upload wrote in a bucket (parts, a staged tail, a
    session) goes with it."""
    emulator = request.getfixturevalue(store)
    server = startServer(
        str(tmp_path / "data"), *emulator.serverArgs(),
        "--upload-expiry", "6", "--claim-lease", "3",
        env=emulator.serverEnv(),
    )  # fmt: skip
    try:
        url = created(server, 20 * MiB)
        assert patch(server, url, 0, os.urandom(6 * MiB + 1000)).status_code == 204
        [(key,)] = server.sql("SELECT blob_key FROM upload")
        assert emulator.objects(key) or (store == "seaweedfs" and emulator.uploads(key))

        def gone() -> bool:
            left = emulator.objects(key)
            if store == "seaweedfs":
                left += emulator.uploads(key)
            return not left and server.sql("SELECT count(*) FROM upload") == [(0,)]

        waitUntil(gone, 60, "the expired upload swept")
        assert requests.head(url, headers=TUS, auth=server.auth).status_code == 404
    finally:
        server.stop()


# Two nodes, one database, one bucket


def _dsnParts(dsn: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in dsn.split())


def test_aCreationThenAPatchThroughASecondNode(
    tmp_path: Path, seaweedfs: SeaweedFS, dsn: str
) -> None:
    db = _dsnParts(dsn)
    nodes = []
    try:
        for name in ("a", "b"):
            node = startServer(
                str(tmp_path / name), *seaweedfs.serverArgs(),
                "--db-host", db["host"], "--db-port", db["port"],
                "--db-name", db["dbname"], "--db-user", db["user"],
                env=seaweedfs.serverEnv(),
            )  # fmt: skip
            nodes.append(node)
        a, b = nodes
        blob = os.urandom(9 * MiB)
        uuid = newUUID()
        path = created(a, len(blob), uuid=uuid).removeprefix(a.url)
        assert patch(a, f"{a.url}{path}", 0, blob[: 4 * MiB]).status_code == 204
        assert offsetOf(b, f"{b.url}{path}") == 4 * MiB
        reply = patch(b, f"{b.url}{path}", 4 * MiB, blob[4 * MiB :])
        assert reply.status_code == 204, reply.text
        # Node b never saw the first bytes: it read the blob back for its sha256.
        document = resource(a, f"/data/{uuid}")
        assert document["sha256"] == hashlib.sha256(blob).hexdigest()
    finally:
        for node in nodes:
            node.stop()


# Memory


def test_aGiBInHundredMiBPatchesCutThreeTimesKeepsTheServerSmall(
    tmp_path: Path, bigFile: tuple[str, str]
) -> None:
    path, sha = bigFile
    size = os.path.getsize(path)
    server = startServer(str(tmp_path / "data"))
    try:
        uuid = newUUID()
        url = created(server, size, uuid=uuid)
        offset, requestsSent, cuts = 0, 0, 0
        with open(path, "rb") as f:
            while offset < size:
                length = min(100 * MiB, size - offset)
                requestsSent += 1
                if requestsSent in (2, 5, 8):
                    sent = length // 2 + 12345

                    def send(s: socket.socket, at: int = offset, n: int = sent) -> None:
                        s.sendfile(f, at, n)

                    cutPatch(server, url, offset, length, send, sent)
                    cuts += 1
                    offset += sent
                    continue
                f.seek(offset)
                reply = patch(server, url, offset, f.read(length))
                assert reply.status_code == 204, reply.text
                offset = int(reply.headers["Upload-Offset"])
        assert cuts == 3
        document = resource(server, f"/data/{uuid}")
        assert (document["size"], document["sha256"]) == (size, sha)
        peak = server.peakRSS()
        assert peak <= 100 * 1000 * 1000, f"peak RSS {peak / MiB:.0f} MiB"
        print(f"peak RSS of the server over a 1 GiB upload cut three times: {peak / MiB:.1f} MiB")
    finally:
        server.stop()
