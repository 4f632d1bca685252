"""
Embedding: a L{StorageService} built with C{listen=False}, in this process,
its resource mounted under C{/storage/} of another Klein application served
by L{StreamingSite}; uploads and downloads through the host, byte for byte.
Under a stock L{twisted.web.server.Site} the same mount serves reads but
refuses uploads, saying why.  The host answers 503 for the storage routes
until the service has started, and again once it has stopped.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import cast

import pytest_twisted
import treq
from klein import Klein
from treq.client import HTTPClient
from twisted.internet import endpoints, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from morpheo import StorageConfig, StorageService, StreamingSite
from tests.integration.helpers import FORM_HEADERS, form, jsonOf, newUUID, uploadFields

USER, PASSWORD = "alice", "secret"
AUTH = (USER, PASSWORD)
TIMEOUT = 30


def hostApp(storage: StorageService) -> Klein:
    """The README's example host: routes of its own, the storage under /storage/."""
    app = Klein()

    @app.route("/hello")
    def hello(request):
        return b"hello from the host\n"

    @app.route("/storage/", branch=True)
    def storageRoutes(request):
        return storage.resource()

    return app


class Host:
    """The host application, listening on a free port of 127.0.0.1."""

    def __init__(self, storage: StorageService, site: Site) -> None:
        self.storage = storage
        self.site = site
        self.port: IListeningPort | None = None

    async def listen(self) -> None:
        endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        self.port = await endpoint.listen(self.site)

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self.port is not None:
            stopped = self.port.stopListening()
            if stopped is not None:
                await stopped


@pytest_twisted.async_yield_fixture
async def http() -> AsyncIterator[HTTPClient]:
    """A persistent pool, as a host's clients would use: keep-alive through the mount."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    yield HTTPClient(Agent(reactor, pool=pool))
    await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture(scope="module")
async def embedded(tmp_path_factory) -> AsyncIterator[tuple[StorageService, Host, Host]]:
    """One service for the module, mounted in a streaming host and in a stock one."""
    dataDir = str(tmp_path_factory.mktemp("embedded"))
    storage = StorageService(
        StorageConfig(user=USER, password=PASSWORD, dataDir=dataDir), reactor, listen=False
    )
    streaming = Host(storage, StreamingSite(hostApp(storage).resource()))
    stock = Host(storage, Site(hostApp(storage).resource()))
    try:
        await streaming.listen()
        await stock.listen()
        storage.startService()
        await storage.started.addTimeout(120, reactor)
        yield storage, streaming, stock
    finally:
        await streaming.close()
        await stock.close()
        if storage.running:
            await storage.stopService()


async def get(http: HTTPClient, url: str, **kw):
    return await http.get(url, auth=AUTH, timeout=TIMEOUT, **kw)


async def postUpload(http: HTTPClient, base: str, kind: str, data: bytes, uuid: str):
    """A form upload of C{kind} to the storage under C{base}, whatever the answer."""
    return await http.post(
        f"{base}/{kind}",
        data=form(*uploadFields(kind, data, uuid=uuid)),
        headers=FORM_HEADERS,
        auth=AUTH,
        timeout=TIMEOUT,
    )


@pytest_twisted.ensureDeferred
async def test_hostRoutesBesideTheStorage(http, embedded) -> None:
    """The host keeps its routes; the storage's open and data routes answer under /storage/."""
    _, host, _ = embedded
    r = await http.get(f"{host.url}/hello", timeout=TIMEOUT)
    assert await treq.content(r) == b"hello from the host\n"
    r = await http.get(f"{host.url}/storage/health", timeout=TIMEOUT)
    assert r.code == 200 and await jsonOf(r) == {"status": "ok"}
    r = await http.get(f"{host.url}/storage/ready", timeout=TIMEOUT)
    assert r.code == 200, await treq.text_content(r)
    assert await jsonOf(r) == {"status": "ready", "database": "ok", "blobstore": "ok"}
    r = await http.get(f"{host.url}/storage/algo", timeout=TIMEOUT)
    assert r.code == 401
    assert r.headers.getRawHeaders(b"www-authenticate")
    r = await get(http, f"{host.url}/storage/nothing-here/at/all")
    assert r.code == 404
    assert "error" in await jsonOf(r)


@pytest_twisted.ensureDeferred
async def test_uploadAndDownloadThroughTheHost(http, embedded) -> None:
    """A form of a few MB and a raw model go in through the host and come out byte for byte."""
    _, host, _ = embedded
    base = f"{host.url}/storage"
    algoData = os.urandom(4 * 1024 * 1024 + 3)
    algo = newUUID()
    r = await postUpload(http, base, "algo", algoData, algo)
    assert r.code == 201, await treq.text_content(r)
    meta = await jsonOf(r)
    assert meta["uuid"] == algo and meta["size"] == len(algoData)
    assert meta["sha256"] == hashlib.sha256(algoData).hexdigest()

    modelData = os.urandom(3 * 1024 * 1024 + 5)
    r = await http.post(f"{base}/model?algo={algo}", data=modelData, auth=AUTH, timeout=TIMEOUT)
    assert r.code == 201, await treq.text_content(r)
    model = (await jsonOf(r))["uuid"]

    for path, data in [(f"algo/{algo}", algoData), (f"model/{model}", modelData)]:
        r = await get(http, f"{base}/{path}/blob")
        assert r.code == 200
        assert await treq.content(r) == data
        r = await get(http, f"{base}/{path}/blob", headers={b"Range": [b"bytes=1000-1999"]})
        assert r.code == 206
        assert await treq.content(r) == data[1000:2000]
    r = await get(http, f"{base}/model?algo={algo}")
    assert [m["uuid"] for m in (await jsonOf(r))["items"]] == [model]


@pytest_twisted.ensureDeferred
async def test_thePathsTheStorageGivesAreUnderTheMount(http, embedded) -> None:
    """
    A resumable upload's Location and Morpheo-Resource, and a list's next,
    lead a client of the host to /storage/..., where it follows them.
    """
    _, host, _ = embedded
    base = f"{host.url}/storage"
    data, uuid = os.urandom(100_000), newUUID()
    metadata = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in (("kind", "data"), ("uuid", uuid))
    )
    tus = {b"Tus-Resumable": [b"1.0.0"]}
    r = await http.post(
        f"{base}/uploads",
        headers={
            **tus,
            b"Upload-Length": [str(len(data)).encode()],
            b"Upload-Metadata": [metadata.encode()],
        },
        auth=AUTH,
        timeout=TIMEOUT,
    )
    assert r.code == 201, await treq.text_content(r)
    [location] = r.headers.getRawHeaders(b"location")
    assert location.startswith(b"/storage/uploads/")
    assert r.headers.getRawHeaders(b"morpheo-resource") == [f"/storage/data/{uuid}".encode()]
    r = await http.patch(
        host.url + location.decode(),
        data=data,
        headers={
            **tus,
            b"Upload-Offset": [b"0"],
            b"Content-Type": [b"application/offset+octet-stream"],
        },
        auth=AUTH,
        timeout=TIMEOUT,
    )
    assert r.code == 204, await treq.text_content(r)
    r = await get(http, f"{base}/data/{uuid}/blob")
    assert await treq.content(r) == data
    for _ in range(2):
        assert (await postUpload(http, base, "data", b"x", newUUID())).code == 201
    r = await get(http, f"{base}/data?limit=1")
    following = (await jsonOf(r))["next"]
    assert following.startswith("/storage/data?"), following
    r = await get(http, host.url + following)
    assert r.code == 200 and len((await jsonOf(r))["items"]) == 1


@pytest_twisted.ensureDeferred
async def test_stockSiteServesReadsButRefusesUploads(http, embedded) -> None:
    """
    Under a stock Site, twisted.web has read the whole body before any
    resource runs: the upload is refused with a message naming the site to
    use, nothing is stored, and reads work as under the streaming site.
    """
    storage, host, stock = embedded
    events: list[dict] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        r = await get(http, f"{stock.url}/storage/data")
        assert r.code == 200
    finally:
        globalLogPublisher.removeObserver(observer)
    [warning] = [e for e in events if "StreamingSite" in str(e.get("log_format"))]
    assert "serve it with morpheo.StreamingSite" in formatEvent(warning)

    data = os.urandom(300_000)
    uuid = newUUID()
    r = await postUpload(http, f"{stock.url}/storage", "data", data, uuid)
    assert r.code == 500
    error = (await jsonOf(r))["error"]
    assert "morpheo.StreamingSite" in error
    assert "read the whole body" in error
    r = await get(http, f"{host.url}/storage/data/{uuid}")
    assert r.code == 404
    assert storage.api is not None
    assert await storage.api.objects.metadata.get("data", uuid) is None

    # Reads need no body: they work under the stock site.
    r = await postUpload(http, f"{host.url}/storage", "data", data, uuid)
    assert r.code == 201, await treq.text_content(r)
    r = await get(http, f"{stock.url}/storage/data/{uuid}/blob")
    assert r.code == 200 and await treq.content(r) == data
    r = await http.post(
        f"{stock.url}/storage/model?algo={newUUID()}", data=b"m", auth=AUTH, timeout=TIMEOUT
    )
    assert r.code == 500 and "morpheo.StreamingSite" in (await jsonOf(r))["error"]


@pytest_twisted.ensureDeferred
async def test_503BeforeTheStartAndAfterTheStop(http, tmp_path) -> None:
    """
    A service of its own, mounted before it starts: its routes answer 503
    (readable by a browser) while the host's own routes work; then 200; once
    stopped, 503 again, and its embedded PostgreSQL is gone.
    """
    dataDir = str(tmp_path / "data")
    storage = StorageService(
        StorageConfig(user=USER, password=PASSWORD, dataDir=dataDir), reactor, listen=False
    )
    host = Host(storage, StreamingSite(hostApp(storage).resource()))
    await host.listen()
    try:
        r = await get(http, f"{host.url}/storage/algo", headers={"Origin": ["https://a.example"]})
        assert r.code == 503
        assert r.headers.getRawHeaders(b"retry-after") == [b"5"]
        assert r.headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
        assert "starting" in (await jsonOf(r))["error"]
        r = await http.get(f"{host.url}/hello", timeout=TIMEOUT)
        assert r.code == 200 and await treq.content(r) == b"hello from the host\n"

        storage.startService()
        await storage.started.addTimeout(120, reactor)
        r = await get(http, f"{host.url}/storage/problem")
        assert r.code == 200

        await storage.stopService()
        assert not os.path.exists(os.path.join(dataDir, "postgres", "postmaster.pid"))
        r = await get(http, f"{host.url}/storage/problem")
        assert r.code == 503
        assert "stopped" in (await jsonOf(r))["error"]
        r = await http.get(f"{host.url}/hello", timeout=TIMEOUT)
        assert r.code == 200
    finally:
        await host.close()
        if storage.running:
            await storage.stopService()


@pytest_twisted.ensureDeferred
async def test_theMetricsAreUnderTheMountBehindTheCredentials(http, embedded) -> None:
    storage, streaming, _ = embedded
    refused = await http.get(f"{streaming.url}/storage/metrics", timeout=TIMEOUT)
    assert refused.code == 401
    await refused.content()
    data = os.urandom(50_000)
    uploaded = await postUpload(http, f"{streaming.url}/storage", "algo", data, newUUID())
    assert uploaded.code == 201
    await uploaded.content()
    page = await get(http, f"{streaming.url}/storage/metrics")
    assert page.code == 200
    text = (await page.content()).decode()
    line = 'morpheo_http_requests_total{method="POST",route="/{kind}",status="201"}'
    assert any(row.startswith(line) for row in text.splitlines()), text[:2000]
    received = storage.metrics.registry.get_sample_value("morpheo_http_received_bytes_total")
    assert received is not None and received > len(data)
