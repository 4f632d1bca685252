"""
The routes mounted in a stock twisted.web Site, which reads every body
whole before any resource runs: reads are served, uploads refused with a
500 that says why, and nothing is stored.
"""

from __future__ import annotations

import base64
import json

from twisted.web.server import Site

from morpheo.objects import Objects
from morpheo.web import BasicAuth, StorageAPI

from .harness import PASSWORD, USER, ImmediatePool, Service

CREDENTIALS = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: storage.test", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> dict[str, str]:
    document: dict[str, str] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return document


def test_aStockSiteServesReadsButRefusesUploads() -> None:
    """twisted.web's own Site reads bodies whole before any resource runs."""
    service = Service()
    stored = service.stored("data", b"abc")
    objects = Objects(
        service.metadata,
        service.blobs,
        reactor=service.reactor,
        pool=ImmediatePool(),  # type: ignore[arg-type]
    )
    site = Site(
        StorageAPI(objects, BasicAuth({USER: PASSWORD})).resource(), reactor=service.reactor
    )
    auth = f"Authorization: Basic {CREDENTIALS}"
    read = service.raw(head("GET", f"/data/{stored['uuid']}", auth), site)
    assert status(read) == 200
    algo = service.algo()
    before = service.snapshot()
    upload = service.raw(head("POST", f"/model?algo={algo}", auth, length=3) + b"abc", site)
    assert status(upload) == 500
    assert body(upload)["error"].startswith(
        "uploads need the storage resource to be served by morpheo.StreamingSite"
    )
    service.assertNothingLeft(before)
