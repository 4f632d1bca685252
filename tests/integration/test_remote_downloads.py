"""
What the remote stores are asked for a download, seen through a proxy in
front of SeaweedFS (S3) and fake-gcs-server: a whole blob is one plain GET
(no C{Range}: the stores serve those for less); a range is a C{Range},
and one from the start is asked for as such once the plain GET shows the
blob longer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from attrs import frozen
from treq.client import HTTPClient

from tests.integration.helpers import download, upload
from tests.integration.servers import FakeGCS, RecordingProxy, SeaweedFS, Server, startServer

#: Larger than a socket's buffers: a prefix read must stop reading.
SIZE = 8 * 1024 * 1024


@frozen
class Proxied:
    server: Server
    proxy: RecordingProxy

    def ranges(self, since: int) -> list[bytes]:
        """The Range headers of the GETs the store was sent after byte C{since}."""
        return re.findall(rb"(?im)^range:[^\r\n]*", self.proxy.sent()[since:])

    def gets(self, since: int) -> int:
        return len(re.findall(rb"(?m)^GET ", self.proxy.sent()[since:]))


@pytest.fixture(scope="module", params=["s3", "gc"])
def proxied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    directory = tmp_path_factory.mktemp(f"proxied-{request.param}")
    if request.param == "s3":
        store: SeaweedFS | FakeGCS = request.getfixturevalue("seaweedfs")
    else:
        store = request.getfixturevalue("fakeGCS")
    with RecordingProxy(store.port) as proxy:
        args = store.serverArgs()
        flag = "--s3-endpoint" if request.param == "s3" else "--gc-endpoint"
        args[args.index(flag) + 1] = proxy.endpoint
        server = startServer(str(directory / "server"), *args, env=store.serverEnv())
        try:
            yield Proxied(server, proxy)
        finally:
            server.stop()


@pytest_twisted.ensureDeferred
async def test_whole_blob_is_a_plain_get(
    http: HTTPClient, proxied: Proxied, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    uuid = (await upload(http, proxied.server, "data", data))["uuid"]
    since = len(proxied.proxy.sent())
    code, body = await download(http, proxied.server, f"/data/{uuid}/blob")
    assert code == 200 and body == data
    assert proxied.gets(since) == 1
    assert proxied.ranges(since) == []


@pytest_twisted.ensureDeferred
async def test_ranges_from_the_start_and_elsewhere(http: HTTPClient, proxied: Proxied) -> None:
    data = os.urandom(SIZE)
    uuid = (await upload(http, proxied.server, "data", data))["uuid"]
    path = f"/data/{uuid}/blob"
    since = len(proxied.proxy.sent())
    code, body = await download(http, proxied.server, path, headers={"Range": "bytes=0-99"})
    assert code == 206 and body == data[:100]
    assert [r.lower() for r in proxied.ranges(since)] == [b"range: bytes=0-99"]
    # The plain GET dropped for it leaves the next download whole.
    code, body = await download(http, proxied.server, path)
    assert code == 200 and body == data
    since = len(proxied.proxy.sent())
    code, body = await download(http, proxied.server, path, headers={"Range": "bytes=1000-1999"})
    assert code == 206 and body == data[1000:2000]
    assert [r.lower() for r in proxied.ranges(since)] == [b"range: bytes=1000-1999"]
