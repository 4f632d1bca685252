"""
In memory, at the level of bytes: what can be decided from the headers is
answered before a byte of the body is read (so a client that sent
C{Expect: 100-continue} never uploads it), and a stock twisted.web Site
serves reads but refuses uploads, saying why.
"""

from __future__ import annotations

import base64
import json

import pytest
from twisted.web.server import Site

from morpheo.objects import Objects
from morpheo.web import BasicAuth, StorageAPI

from .harness import FORM_TYPE, PASSWORD, USER, ImmediatePool, Service, newUUID

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


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/data", (), 401),
        ("/nokind", (f"Authorization: Basic {CREDENTIALS}",), 404),
        (f"/model?algo={newUUID()}", (f"Authorization: Basic {CREDENTIALS}",), 404),
    ],
)
def test_whatTheHeadersDecideIsAnsweredWithoutAContinue(
    path: str, headers: tuple[str, ...], code: int
) -> None:
    service = Service()
    answer = service.raw(
        head(
            "POST",
            path,
            "Expect: 100-continue",
            f"Content-Type: {FORM_TYPE}",
            *headers,
            length=10_000_000,
        )
    )
    assert b"100 Continue" not in answer
    assert status(answer) == code
    assert "error" in body(answer)
    service.assertNothingLeft()


def test_aBodyOverTheMaximumIsRefusedBeforeItIsSent() -> None:
    service = Service(maxBlobSize=1000)
    answer = service.raw(
        head(
            "POST",
            "/data",
            "Expect: 100-continue",
            f"Authorization: Basic {CREDENTIALS}",
            f"Content-Type: {FORM_TYPE}",
            length=10_000_000,
        )
    )
    assert b"100 Continue" not in answer
    assert status(answer) == 413
    assert body(answer) == {"error": "the blob is larger than the maximum of 1000 bytes"}


def test_anAcceptedUploadIsToldToContinue() -> None:
    service = Service()
    answer = service.raw(
        head(
            "POST",
            "/data",
            "Expect: 100-continue",
            f"Authorization: Basic {CREDENTIALS}",
            f"Content-Type: {FORM_TYPE}",
            length=500,
        )
    )
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n")


def test_aModelWithoutLengthIs411() -> None:
    service = Service()
    algo = service.algo()
    answer = service.raw(
        head(
            "POST",
            f"/model?algo={algo}",
            f"Authorization: Basic {CREDENTIALS}",
            "Transfer-Encoding: chunked",
        )
        + b"3\r\nabc\r\n0\r\n\r\n"
    )
    assert status(answer) == 411
    assert body(answer) == {"error": "a model upload needs a Content-Length (the model's size)"}


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
