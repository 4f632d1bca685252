"""
Corners of the contract, in memory, beside the main unit tests: a remote
store's 502, readiness coming back, the refusals of malformed stated
digests, the rarer validators of conditional and range requests, and the
changes a PATCH cannot make.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from morpheo.web._http import httpDate

from .harness import (
    FORM_TYPE,
    Reply,
    Service,
    fieldsFor,
    form,
    newUUID,
)

BLOB = bytes(range(256)) * 4
STORE_DOWN = "the blob store (mock) failed; try again later"


def b64(name: str, data: bytes) -> str:
    return base64.b64encode(hashlib.new(name, data).digest()).decode()


def refused(
    service: Service, reply: Reply, code: int, before: tuple[list[Any], list[str]] | None = None
) -> str:
    """C{reply} is C{code} and nothing was left behind; its sentence."""
    assert reply.code == code, reply.body
    service.assertNothingLeft(before)
    return reply.error


# Uploads


def test_aModelUploadWhileTheStoreIsDownIs500AndLeavesNothing(service: Service) -> None:
    algo = service.algo()
    before = service.snapshot()
    service.blobs.down = True
    assert refused(service, service.upload("model", BLOB, algo=algo), 500, before) == STORE_DOWN


def test_aRemoteStoresFailureIs502NamingIt(service: Service) -> None:
    service.blobs.remote = True
    service.blobs.down = True
    assert refused(service, service.upload("data", BLOB), 502) == STORE_DOWN


def test_aModelKeepsAMeaningfulContentType(service: Service) -> None:
    algo = service.algo()
    reply = service.request(
        "POST", f"/model?algo={algo}", BLOB, {"Content-Type": "application/x-tar"}
    )
    download = service.request("GET", f"/model/{reply.json()['uuid']}/blob")
    assert download.header("content-type") == "application/x-tar"


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        ("Repr-Digest", "sha-256", "Repr-Digest 'sha-256' is not name=:base64:"),
        ("Repr-Digest", "sha-256=abc", "Repr-Digest sha-256 must be a byte sequence, :base64:"),
        ("Repr-Digest", "sha-256=:!!!:", "Repr-Digest sha-256 is not valid base64"),
        ("Content-MD5", "!!!", "Content-MD5 is not valid base64"),
        ("Content-MD5", b64("sha256", b"x"), "Content-MD5 must be the base64 of a 16-byte MD5"),
    ],
)
def test_aMalformedStatedDigestIs400(
    service: Service, header: str, value: str, message: str
) -> None:
    algo = service.algo()
    before = service.snapshot()
    reply = service.request("POST", f"/model?algo={algo}", BLOB, {header: value})
    assert refused(service, reply, 400, before).startswith(message)


def test_aDigestOfAnAlgorithmNotKnownIsIgnored(service: Service) -> None:
    algo = service.algo()
    reply = service.request("POST", f"/model?algo={algo}", BLOB, {"Repr-Digest": "sha-1=:AAAA:"})
    assert reply.code == 201


def test_aWrongSha512OnTheBlobPartNamesIt(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB, **{"Repr-Digest": f"sha-512=:{b64('sha512', b'')}:"})
    reply = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE})
    message = refused(service, reply, 400)
    assert message == "the blob does not match its stated sha-512 Repr-Digest: nothing was stored"


# Readiness


def test_readinessComesBackWithTheStoresAndHealthNeverLeft(service: Service) -> None:
    service.metadata.goDown()
    service.blobs.down = True
    assert service.request("GET", "/ready", auth=None).code == 503
    assert service.request("GET", "/health", auth=None).json() == {"status": "ok"}
    service.metadata.comeBack()
    service.blobs.down = False
    assert service.request("GET", "/ready", auth=None).code == 200


# Downloads


@pytest.fixture
def stored(service: Service) -> dict[str, Any]:
    return service.stored("data", BLOB)


def blob(service: Service, stored: dict[str, Any], **headers: str) -> Reply:
    return service.request("GET", f"/data/{stored['uuid']}/blob", headers=headers)


@pytest.mark.parametrize("spec", ["-1", "-100", "-99999", "1000-", "5-5000000000"])
def test_suffixAndOpenRangesAreClippedToTheBlob(
    service: Service, stored: dict[str, Any], spec: str
) -> None:
    size = len(BLOB)
    first, _, last = spec.partition("-")
    start = max(0, size - int(last)) if first == "" else int(first)
    end = size - 1 if first == "" or not last else min(int(last), size - 1)
    reply = blob(service, stored, Range=f"bytes={spec}")
    assert (reply.code, reply.body) == (206, BLOB[start : end + 1])
    assert reply.header("content-range") == f"bytes {start}-{end}/{size}"


def test_ifRangeWithTheUploadsDateServesTheRange(service: Service, stored: dict[str, Any]) -> None:
    date = httpDate(stored["timestamp_upload"])
    reply = blob(service, stored, Range="bytes=2-3", **{"If-Range": date})
    assert (reply.code, reply.body) == (206, BLOB[2:4])


@pytest.mark.parametrize("validator", ['W/"weak"', "Mon, 01 Jan 2024 00:00:00 GMT"])
def test_ifRangeOfAnotherVersionServesTheWholeBlob(
    service: Service, stored: dict[str, Any], validator: str
) -> None:
    reply = blob(service, stored, Range="bytes=2-3", **{"If-Range": validator})
    assert (reply.code, reply.body) == (200, BLOB)


@pytest.mark.parametrize("tag", ["W/{etag}", "*", '"x", {etag}'])
def test_ifNoneMatchComparesWeaklyAndTakesListsAndStars(
    service: Service, stored: dict[str, Any], tag: str
) -> None:
    etag = f'"{stored["sha256"]}"'
    reply = blob(service, stored, **{"If-None-Match": tag.format(etag=etag)})
    assert (reply.code, reply.body) == (304, b"")


def test_ifMatchComparesStrongly(service: Service, stored: dict[str, Any]) -> None:
    assert blob(service, stored, **{"If-Match": f'W/"{stored["sha256"]}"'}).code == 412
    assert blob(service, stored, **{"If-Match": f'"x", "{stored["sha256"]}"'}).code == 200


def test_ifNoneMatchOutweighsIfModifiedSince(service: Service, stored: dict[str, Any]) -> None:
    date = httpDate(stored["timestamp_upload"])
    reply = blob(service, stored, **{"If-None-Match": '"other"', "If-Modified-Since": date})
    assert reply.code == 200


# Changes


def test_aPatchIfNoneMatchOfThisVersionIs412(service: Service) -> None:
    uuid = service.stored("problem", BLOB)["uuid"]
    before = service.snapshot()
    reply = service.request(
        "PATCH",
        f"/problem/{uuid}",
        form({"name": "x"}),
        {"Content-Type": FORM_TYPE, "If-None-Match": "*"},
    )
    assert (
        refused(service, reply, 412, before)
        == f"problem {uuid} is not the version this change was made for"
    )


@pytest.mark.parametrize(
    ("fields", "withBlob", "message"),
    [
        ({"sha256": "0" * 64}, False, "sha256 is given but no blob follows it"),
        ({}, True, "missing required field size before blob (text fields come first)"),
    ],
)
def test_aPatchsBlobAndItsFieldsComeTogether(
    service: Service, fields: dict[str, str], withBlob: bool, message: str
) -> None:
    uuid = service.stored("problem", BLOB)["uuid"]
    before = service.snapshot()
    body = form(fields, BLOB if withBlob else None)
    reply = service.request("PATCH", f"/problem/{uuid}", body, {"Content-Type": FORM_TYPE})
    assert refused(service, reply, 400, before) == message


def test_aPatchWithABlobOverTheMaximumIs413() -> None:
    service = Service(maxBlobSize=10)
    uuid = service.stored("problem", b"small")["uuid"]
    before = service.snapshot()
    body = form({"size": str(len(BLOB))}, BLOB)
    reply = service.request("PATCH", f"/problem/{uuid}", body, {"Content-Type": FORM_TYPE})
    assert refused(service, reply, 413, before) == "the blob is larger than the maximum of 10 bytes"


def test_aPatchWhileTheStoreIsDownIs500AndChangesNothing(service: Service) -> None:
    uuid = service.stored("problem", BLOB)["uuid"]
    before = service.snapshot()
    service.blobs.down = True
    body = form({"uuid": newUUID(), "size": "3"}, b"new")
    reply = service.request("PATCH", f"/problem/{uuid}", body, {"Content-Type": FORM_TYPE})
    assert refused(service, reply, 500, before) == STORE_DOWN
