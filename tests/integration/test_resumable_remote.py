"""
Resumable uploads through a server whose blobs are in a bucket: a GiB sent
as 100 MiB PATCHes, three of them cut mid-way, keeps the server's memory
small on S3 (SeaweedFS), where each request's bytes go out in parts and
what a cut request leaves is staged in the bucket; and so do 320 MiB in
40 MiB PATCHes on Google Cloud Storage (fake-gcs-server, which hashes the
whole of a session's bytes again at every chunk, and would take minutes
over a GiB).
"""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

import pytest
import requests

from tests.integration.servers import FakeGCS, SeaweedFS, startServer, waitUntil

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


def digestOf(path: str, size: int) -> str:
    """The sha256 of the first C{size} bytes of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while size > 0:
            block = f.read(min(MiB, size))
            digest.update(block)
            size -= len(block)
    return digest.hexdigest()


def offsetOf(url: str, auth: tuple[str, str]) -> int:
    reply = requests.head(url, headers=TUS, auth=auth)
    assert reply.status_code == 200, reply.status_code
    return int(reply.headers["Upload-Offset"])


@pytest.mark.parametrize(("store", "size", "step"), [("s3", 1024, 100), ("gcs", 320, 40)])
def test_large_patches_cut_three_times_keep_the_server_small(
    store: str,
    size: int,
    step: int,
    tmp_path: Path,
    bigFile: tuple[str, str],
    request: pytest.FixtureRequest,
) -> None:
    path, sha = bigFile
    size *= MiB
    if size != Path(path).stat().st_size:
        sha = digestOf(path, size)
    if store == "s3":
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        server = startServer(str(tmp_path), *seaweedfs.serverArgs(), env=seaweedfs.serverEnv())
    else:
        gcs: FakeGCS = request.getfixturevalue("fakeGCS")
        server = startServer(str(tmp_path), *gcs.serverArgs())
    try:
        metadata = "kind " + base64.b64encode(b"data").decode()
        reply = requests.post(
            f"{server.url}/uploads",
            headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": metadata},
            auth=server.auth,
        )
        assert reply.status_code == 201, reply.text
        url = f"{server.url}{reply.headers['Location']}"
        basic = base64.b64encode(":".join(server.auth).encode()).decode()
        offset, sent, cuts = 0, 0, 0
        with open(path, "rb") as f:
            while offset < size:
                length = min(step * MiB, size - offset)
                sent += 1
                if sent in (2, 5, 8):
                    # Cut mid-part: the connection closed after half and a bit.
                    part = length // 2 + 12345
                    head = (
                        f"PATCH {url.removeprefix(server.url)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Basic {basic}\r\nTus-Resumable: 1.0.0\r\n"
                        "Content-Type: application/offset+octet-stream\r\n"
                        f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
                    )
                    with socket.create_connection(("127.0.0.1", server.port)) as s:
                        s.sendall(head.encode())
                        s.sendfile(f, offset, part)
                    at = offset + part

                    def recorded(at: int = at) -> bool:
                        return offsetOf(url, server.auth) == at

                    waitUntil(recorded, 120, "the cut recorded")
                    offset, cuts = at, cuts + 1
                    continue
                f.seek(offset)
                reply = requests.patch(
                    url,
                    data=f.read(length),
                    headers={
                        **TUS,
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": str(offset),
                    },
                    auth=server.auth,
                )
                assert reply.status_code == 204, reply.text
                offset = int(reply.headers["Upload-Offset"])
        assert cuts == 3
        resource = reply.headers["Morpheo-Resource"]
        document = requests.get(f"{server.url}{resource}", auth=server.auth).json()
        assert (document["size"], document["sha256"]) == (size, sha)
        peak = server.peakRSS()
        assert peak <= 100 * 1000 * 1000, f"peak RSS {peak / MiB:.0f} MiB"
    finally:
        server.stop()
