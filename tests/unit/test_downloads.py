"""
Downloads in memory, like an object store's: the headers every blob
carries, HEAD, byte ranges (one, a suffix, several as
multipart/byteranges, 416, If-Range) and conditional requests.
"""

from __future__ import annotations

import os
from email.utils import formatdate

import pytest

from .harness import FORM_TYPE, Service, fieldsFor, form, sha256

BLOB = os.urandom(10_000)


@pytest.fixture
def stored(service: Service) -> str:
    """A data blob uploaded with its file name and type; its path."""
    body = form(fieldsFor("data", BLOB), BLOB, filename="weights.tar.gz", type="application/gzip")
    reply = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 201
    return f"/data/{reply.json()['uuid']}"


def test_aBlobComesWithItsHeaders(service: Service, stored: str) -> None:
    reply = service.request("GET", f"{stored}/blob")
    document = service.request("GET", stored).json()
    assert reply.code == 200
    assert reply.body == BLOB
    assert reply.header("etag") == f'"{sha256(BLOB)}"'
    assert reply.length == len(BLOB)
    assert reply.header("content-type") == "application/gzip"
    assert reply.header("content-disposition") == 'attachment; filename="weights.tar.gz"'
    assert reply.header("accept-ranges") == "bytes"
    assert reply.header("last-modified") == formatdate(document["timestamp_upload"], usegmt=True)
    assert (reply.header("repr-digest") or "").startswith("sha-256=:")


def test_aFileNameBeyondASCIIIsGivenInUTF8Too(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB, filename="modèle.bin")
    uuid = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE}).json()["uuid"]
    disposition = service.request("GET", f"/data/{uuid}/blob").header("content-disposition")
    assert disposition == "attachment; filename=\"mod_le.bin\"; filename*=UTF-8''mod%C3%A8le.bin"


def test_headGivesTheHeadersAlone(service: Service, stored: str) -> None:
    get = service.request("GET", f"{stored}/blob")
    head = service.request("HEAD", f"{stored}/blob")
    assert (head.code, head.body) == (200, b"")
    for name in ("etag", "content-type", "last-modified", "repr-digest"):
        assert head.header(name) == get.header(name), name
    assert head.header("content-length") == str(len(BLOB))


def test_metadataCarriesTheValidatorsToo(service: Service, stored: str) -> None:
    reply = service.request("GET", stored)
    assert reply.header("etag") == f'"{sha256(BLOB)}"'
    head = service.request("HEAD", stored)
    assert (head.code, head.body, head.header("etag")) == (200, b"", reply.header("etag"))


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("0-99", 0, 99), ("9900-", 9900, 9999), ("-100", 9900, 9999), ("5000-5000", 5000, 5000),
     ("9000-20000", 9000, 9999)],
)  # fmt: skip
def test_oneRangeIs206WithItsBytes(
    service: Service, stored: str, spec: str, start: int, end: int
) -> None:
    reply = service.request("GET", f"{stored}/blob", headers={"Range": f"bytes={spec}"})
    assert reply.code == 206
    assert reply.body == BLOB[start : end + 1]
    assert reply.header("content-range") == f"bytes {start}-{end}/{len(BLOB)}"
    assert reply.length == end - start + 1


def test_severalRangesAreMultipartByteranges(service: Service, stored: str) -> None:
    reply = service.request("GET", f"{stored}/blob", headers={"Range": "bytes=0-9,100-109"})
    assert reply.code == 206
    ctype = reply.header("content-type") or ""
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    parts = reply.body.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    assert len(parts) == 4
    assert parts[1].endswith(b"\r\n\r\n" + BLOB[0:10] + b"\r\n")
    assert b"Content-Range: bytes 100-109/10000" in parts[2]
    assert parts[2].endswith(b"\r\n\r\n" + BLOB[100:110] + b"\r\n")
    assert reply.length == len(reply.body)


def test_aHundredOverlappingRangesSendTheBlobOnce(service: Service, stored: str) -> None:
    """C{bytes=0-,0-,...}: 305 bytes of header once made 100 copies of the blob."""
    spec = ",".join(["0-"] * 100)
    reply = service.request("GET", f"{stored}/blob", headers={"Range": f"bytes={spec}"})
    assert reply.code == 206
    assert reply.header("content-range") == f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"
    assert reply.body == BLOB


def test_manyRangesGiveTheWholeBlob(service: Service, stored: str) -> None:
    spec = ",".join(f"{i * 100}-{i * 100}" for i in range(17))
    reply = service.request("GET", f"{stored}/blob", headers={"Range": f"bytes={spec}"})
    assert (reply.code, reply.body) == (200, BLOB)
    assert reply.header("content-range") is None


def test_rangesWhosePartsWouldOutweighTheBlobGiveTheWholeBlob(service: Service) -> None:
    """Sixteen one-byte ranges of a small blob: the parts' headers alone are larger."""
    blob = os.urandom(1000)
    uuid = service.upload("data", blob).json()["uuid"]
    spec = ",".join(f"{i * 50}-{i * 50}" for i in range(16))
    reply = service.request("GET", f"/data/{uuid}/blob", headers={"Range": f"bytes={spec}"})
    assert (reply.code, reply.body, reply.length) == (200, blob, len(blob))
    head = service.request("HEAD", f"/data/{uuid}/blob", headers={"Range": f"bytes={spec}"})
    assert (head.code, head.header("content-length")) == (200, "1000")


def test_noMoreBytesThanAboutTwiceTheBlob(service: Service, stored: str) -> None:
    """Whatever the ranges asked, the answer stays within about twice the blob."""
    specs = [
        ",".join(["0-"] * 300),
        ",".join(f"-{n}" for n in range(1, 300)),
        ",".join(f"{i}-{i + 5000}" for i in range(0, 5000, 10)),
        ",".join(f"{i * 600}-{i * 600 + 1}" for i in range(16)),
    ]
    for spec in specs:
        reply = service.request("GET", f"{stored}/blob", headers={"Range": f"bytes={spec}"})
        assert reply.code in (200, 206)
        assert len(reply.body) <= 2 * len(BLOB), spec


@pytest.mark.parametrize("spec", ["10000-", "20000-30000"])
def test_noRangeWithinTheBlobIs416(service: Service, stored: str, spec: str) -> None:
    reply = service.request("GET", f"{stored}/blob", headers={"Range": f"bytes={spec}"})
    assert (reply.code, reply.header("content-range")) == (416, "bytes */10000")
    assert reply.error == "no requested range is within the 10000 bytes"


@pytest.mark.parametrize("spec", ["bytes=abc", "lines=0-10", "bytes=5-1"])
def test_aRangeThatCannotBeReadIsIgnored(service: Service, stored: str, spec: str) -> None:
    reply = service.request("GET", f"{stored}/blob", headers={"Range": spec})
    assert (reply.code, reply.body) == (200, BLOB)


def test_ifRangeWithTheETagGivesTheRange(service: Service, stored: str) -> None:
    etag = f'"{sha256(BLOB)}"'
    reply = service.request(
        "GET", f"{stored}/blob", headers={"Range": "bytes=0-9", "If-Range": etag}
    )
    assert (reply.code, reply.body) == (206, BLOB[:10])


def test_ifRangeWithAnotherETagGivesTheWholeBlob(service: Service, stored: str) -> None:
    reply = service.request(
        "GET", f"{stored}/blob", headers={"Range": "bytes=0-9", "If-Range": '"other"'}
    )
    assert (reply.code, reply.body) == (200, BLOB)


@pytest.mark.parametrize("suffix", ["", "/blob"])
def test_ifNoneMatchTheETagIs304(service: Service, stored: str, suffix: str) -> None:
    etag = f'"{sha256(BLOB)}"'
    for value in (etag, "*", f'"x", {etag}'):
        reply = service.request("GET", stored + suffix, headers={"If-None-Match": value})
        assert (reply.code, reply.body) == (304, b""), value
        assert reply.header("etag") == etag


@pytest.mark.parametrize("suffix", ["", "/blob"])
def test_ifNoneMatchAnotherETagIs200(service: Service, stored: str, suffix: str) -> None:
    reply = service.request("GET", stored + suffix, headers={"If-None-Match": '"other"'})
    assert reply.code == 200


@pytest.mark.parametrize("suffix", ["", "/blob"])
def test_ifMatchAnotherETagIs412(service: Service, stored: str, suffix: str) -> None:
    reply = service.request("GET", stored + suffix, headers={"If-Match": '"other"'})
    assert reply.code == 412
    assert reply.error.endswith(
        f"is not the version that If-Match or If-Unmodified-Since asks for:"
        f' it is now ETag "{sha256(BLOB)}"'
    )
    ok = service.request("GET", stored + suffix, headers={"If-Match": f'"{sha256(BLOB)}"'})
    assert ok.code == 200


def test_ifModifiedSinceTheUploadIs304(service: Service, stored: str) -> None:
    timestamp = service.request("GET", stored).json()["timestamp_upload"]
    later = formatdate(timestamp + 60, usegmt=True)
    earlier = formatdate(timestamp - 60, usegmt=True)
    assert (
        service.request("GET", f"{stored}/blob", headers={"If-Modified-Since": later}).code == 304
    )
    reply = service.request("GET", f"{stored}/blob", headers={"If-Modified-Since": earlier})
    assert reply.code == 200


@pytest.mark.parametrize("suffix", ["", "/blob"])
def test_ifUnmodifiedSinceBeforeTheUploadIs412(service: Service, suffix: str) -> None:
    service.reactor.advance(3600)
    stored = f"/data/{service.stored('data', BLOB)['uuid']}"
    timestamp = service.request("GET", stored).json()["timestamp_upload"]
    earlier = formatdate(timestamp - 60, usegmt=True)
    reply = service.request("GET", stored + suffix, headers={"If-Unmodified-Since": earlier})
    assert reply.code == 412
    assert reply.error.startswith("data ") and "If-Unmodified-Since" in reply.error
    for date in (formatdate(timestamp, usegmt=True), "not a date"):
        ok = service.request("GET", stored + suffix, headers={"If-Unmodified-Since": date})
        assert ok.code == 200, date
    # If-Match decides alone when both are given (RFC 9110 13.2.2).
    both = {"If-Unmodified-Since": earlier, "If-Match": f'"{sha256(BLOB)}"'}
    assert service.request("GET", stored + suffix, headers=both).code == 200


def test_ifUnmodifiedSinceGuardsADeletion(service: Service) -> None:
    service.reactor.advance(3600)
    uuid = service.stored("data", BLOB)["uuid"]
    reply = service.request(
        "DELETE", f"/data/{uuid}", headers={"If-Unmodified-Since": formatdate(0, usegmt=True)}
    )
    assert reply.code == 412
    assert service.request("GET", f"/data/{uuid}").code == 200


def test_aBlobWithoutFileNameIsNamedByItsUUID(service: Service) -> None:
    algo = service.algo()
    reply = service.request("POST", f"/model?algo={algo}", BLOB)
    uuid = reply.json()["uuid"]
    blob = service.request("GET", f"/model/{uuid}/blob")
    assert blob.header("content-disposition") == f'attachment; filename="{uuid}"'
    assert blob.header("content-type") == "application/octet-stream"


# A row whose blob the store cannot serve


def lose(service: Service, stored: str) -> str:
    """Remove C{stored}'s blob from the store behind the service's back; its uuid."""
    uuid = stored.rsplit("/", 1)[1]
    [key] = [k for k in service.blobKeys() if uuid in k]
    del service.blobs._blobs[key]
    return uuid


@pytest.mark.parametrize(
    "headers",
    [{}, {"Range": "bytes=0-99"}, {"Range": "bytes=0-9,20-29"}],
    ids=["whole", "range", "ranges"],
)
def test_aMissingBlobIs500ToGETAndHEADAlike(
    service: Service, stored: str, headers: dict[str, str]
) -> None:
    """
    HEAD does not promise a blob the store does not have: it answers as
    the GET does, a 5xx JSON error naming the store and the object (not
    the key), and none of the blob's headers.
    """
    uuid = lose(service, stored)
    get = service.request("GET", f"{stored}/blob", headers=headers)
    head = service.request("HEAD", f"{stored}/blob", headers=headers)
    assert (get.code, get.error) == (500, f"the blob store (mock) has no blob for data {uuid}")
    assert (head.code, head.body) == (500, b"")
    for reply in (get, head):
        assert reply.header("content-type") == "application/json"
        for name in ("etag", "content-disposition", "content-range", "accept-ranges"):
            assert reply.header(name) is None, name
    # The metadata is still there, and still answers.
    assert service.request("HEAD", stored).code == 200


def test_aMissingBlobOfARemoteStoreIs502(service: Service, stored: str) -> None:
    service.blobs.remote = True
    uuid = lose(service, stored)
    get = service.request("GET", f"{stored}/blob")
    assert (get.code, get.error) == (502, f"the blob store (mock) has no blob for data {uuid}")
    assert service.request("HEAD", f"{stored}/blob").code == 502


def test_headWhileTheStoreIsDownFailsAsGETDoes(service: Service, stored: str) -> None:
    service.blobs.down = True
    get = service.request("GET", f"{stored}/blob")
    head = service.request("HEAD", f"{stored}/blob")
    assert (get.code, head.code) == (500, 500)
    assert get.error == "the blob store (mock) failed; try again later"
    service.blobs.down = False
    assert service.request("HEAD", f"{stored}/blob").code == 200


def test_aBlobOfAnotherSizeThanItsRowIsNoPromiseEither(service: Service, stored: str) -> None:
    """A truncated blob cannot be served whole: HEAD says so, as the GET does."""
    [key] = service.blobKeys()
    service.blobs._blobs[key] = BLOB[:-1]
    head = service.request("HEAD", f"{stored}/blob")
    assert (head.code, head.header("etag")) == (500, None)
    assert service.request("GET", f"{stored}/blob").code == 500


def test_aConditionalHEADOfAMissingBlobIsAnsweredAsTheGET(service: Service, stored: str) -> None:
    """A 304 promises nothing about the bytes: GET and HEAD give it without the store."""
    etag = service.request("GET", stored).header("etag") or ""
    lose(service, stored)
    for method in ("GET", "HEAD"):
        reply = service.request(method, f"{stored}/blob", headers={"If-None-Match": etag})
        assert reply.code == 304, method
