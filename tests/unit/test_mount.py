"""
The storage resource mounted under a path of a host's tree: the paths it
gives out (an upload's C{Location} and C{Morpheo-Resource}, a list's
C{next}) are under the mount, and a client that follows them gets there.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from twisted.web.resource import Resource

from morpheo.web import AccessLogSite

from .harness import Service, newUUID, request, responseHeaders, status


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def hostSite(service: Service, segment: bytes) -> AccessLogSite:
    """A host's tree with the service's resource at C{/segment/}."""
    tree = Resource()
    tree.putChild(segment, service.site.resource)
    return AccessLogSite(tree, reactor=service.reactor)


def body(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("segment", "mount"), [(b"storage", "/storage"), (b"my store", "/my%20store")]
)
def test_aResumableUploadsPathsAreUnderTheMount(segment: bytes, mount: str) -> None:
    service = Service()
    site = hostSite(service, segment)
    blob, uuid = os.urandom(1000), newUUID()
    tus = {"Tus-Resumable": "1.0.0"}
    created = service.raw(
        request(
            "POST",
            f"{mount}/uploads",
            {
                **tus,
                "Upload-Length": str(len(blob)),
                "Upload-Metadata": f"kind {b64('data')},uuid {b64(uuid)}",
            },
        ),
        site,
    )
    assert status(created) == 201, created
    head = responseHeaders(created)
    location = head["location"]
    assert location.startswith(f"{mount}/uploads/")
    assert head["morpheo-resource"] == f"{mount}/data/{uuid}"
    chunk = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    sent = service.raw(request("PATCH", location, chunk, blob), site)
    assert status(sent) == 204, sent
    assert responseHeaders(sent)["morpheo-resource"] == f"{mount}/data/{uuid}"
    got = service.raw(request("GET", f"{mount}/data/{uuid}/blob"), site)
    assert status(got) == 200 and body(got) == blob


def test_aListsNextIsUnderTheMount() -> None:
    service = Service()
    site = hostSite(service, b"storage")
    uuids = {service.stored("data", b"x")["uuid"] for _ in range(3)}
    seen: set[str] = set()
    path: str | None = "/storage/data?limit=2"
    pages = 0
    while path is not None:
        page = service.raw(request("GET", path), site)
        assert status(page) == 200, page
        document = json.loads(body(page))
        seen |= {item["uuid"] for item in document["items"]}
        path = document["next"]
        assert path is None or path.startswith("/storage/data?")
        pages += 1
    assert (seen, pages) == (uuids, 2)


def test_atTheRootThePathsAreTheRoutesOwn() -> None:
    service = Service()
    for _ in range(2):
        service.stored("data", b"x")
    page = service.request("GET", "/data?limit=1").json()
    assert page["next"].startswith("/data?")
