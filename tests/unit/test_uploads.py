"""
Uploads in memory: forms for every kind, raw models, the field rules, stated
digests, size limits; and after every refused upload, nothing left behind
(no row, pending or ready, and no blob).
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from morpheo._kinds import TABLE

from .harness import BOUNDARY, FORM_KINDS, FORM_TYPE, Service, fieldsFor, form, newUUID, sha256

BLOB = os.urandom(5000)
MISMATCH = "the blob does not match its stated {}: nothing was stored"


def post(
    service: Service, kind: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    headers = {"Content-Type": FORM_TYPE, **(headers or {})}
    reply = service.request("POST", f"/{kind}", body, headers)
    return reply.code, reply.error if reply.code >= 400 else ""


def refused(
    service: Service, kind: str, body: bytes, code: int = 400, headers: dict[str, str] | None = None
) -> str:
    """The sentence of a refused form upload; nothing of it is kept."""
    status, error = post(service, kind, body, headers)
    assert status == code, error
    service.assertNothingLeft()
    return error


@pytest.mark.parametrize("kind", FORM_KINDS)
def test_aFormUploadAnswers201WithTheContractJSON(service: Service, kind: str) -> None:
    uuid = newUUID()
    reply = service.upload(kind, BLOB, uuid=uuid)
    assert reply.code == 201
    document = reply.json()
    keys = {"uuid", "timestamp_upload", "size", "sha256", *TABLE[kind].text}
    assert set(document) == keys
    assert document["uuid"] == uuid
    assert (document["size"], document["sha256"]) == (len(BLOB), sha256(BLOB))
    assert reply.header("repr-digest") == (
        "sha-256=:" + base64.b64encode(hashlib.sha256(BLOB).digest()).decode() + ":"
    )
    assert service.request("GET", f"/{kind}/{uuid}").json() == document
    assert service.request("GET", f"/{kind}/{uuid}/blob").body == BLOB


@pytest.mark.parametrize("kind", FORM_KINDS)
def test_anUploadWithoutUUIDGetsOne(service: Service, kind: str) -> None:
    document = service.stored(kind, BLOB)
    assert service.request("GET", f"/{kind}/{document['uuid']}").code == 200


def test_textFieldsMayComeInAnyOrderBeforeTheBlob(service: Service) -> None:
    fields = dict(reversed(list(fieldsFor("problem", BLOB).items())))
    status, _ = post(service, "problem", form(fields, BLOB))
    assert status == 201


def test_anEmptyBlobIsABlob(service: Service) -> None:
    document = service.stored("data", b"")
    assert (document["size"], document["sha256"]) == (0, sha256(b""))
    assert service.request("GET", f"/data/{document['uuid']}/blob").body == b""


def test_anUppercaseUUIDIsStoredInItsCanonicalForm(service: Service) -> None:
    uuid = newUUID()
    document = service.stored("data", BLOB, uuid=uuid.upper().replace("-", ""))
    assert document["uuid"] == uuid


@pytest.mark.parametrize("kind", FORM_KINDS)
def test_aTakenUUIDIs409AndKeepsTheFirst(service: Service, kind: str) -> None:
    first = service.stored(kind, BLOB)
    before = service.snapshot()
    reply = service.upload(kind, os.urandom(10), uuid=first["uuid"])
    assert reply.code == 409
    assert reply.error == f"{kind} {first['uuid']} already exists (or is being uploaded)"
    service.assertNothingLeft(before)
    assert service.request("GET", f"/{kind}/{first['uuid']}/blob").body == BLOB


def test_uuidsArePerKind(service: Service) -> None:
    uuid = newUUID()
    service.stored("data", BLOB, uuid=uuid)
    assert service.upload("prediction", BLOB, uuid=uuid).code == 201


@pytest.mark.parametrize("kind", FORM_KINDS)
def test_aMissingRequiredFieldIs400(service: Service, kind: str) -> None:
    for name in fieldsFor(kind, BLOB):
        fields = fieldsFor(kind, BLOB)
        del fields[name]
        error = refused(service, kind, form(fields, BLOB))
        assert f"missing required field {name}" in error


@pytest.mark.parametrize("kind", FORM_KINDS)
def test_aMissingBlobIs400(service: Service, kind: str) -> None:
    error = refused(service, kind, form(fieldsFor(kind, BLOB)))
    assert error == "missing required field blob (the file, sent last)"


def test_anUnknownFieldIs400NamingIt(service: Service) -> None:
    error = refused(service, "data", form({"colour": "blue", **fieldsFor("data", BLOB)}, BLOB))
    assert error.startswith("unknown field 'colour': this form takes blob, sha256, size, uuid")


def test_aFieldGivenTwiceIs400(service: Service) -> None:
    body = form({"size": str(len(BLOB))}, None).replace(f"--{BOUNDARY}--\r\n".encode(), b"")
    body += form({"size": str(len(BLOB))}, BLOB)
    assert "field 'size' is given twice" in refused(service, "data", body)


def test_aFieldOver255CharactersIs400(service: Service) -> None:
    error = refused(service, "algo", form(fieldsFor("algo", BLOB, name="x" * 256), BLOB))
    assert error == "field 'name' is longer than 255 characters"


def test_255CharactersAreFine(service: Service) -> None:
    assert service.upload("algo", BLOB, name="é" * 255).code == 201


def test_aFieldNotInUTF8Is400(service: Service) -> None:
    body = form(fieldsFor("algo", BLOB, name="NAME"), BLOB).replace(b"NAME", b"\xff\xfe")
    assert refused(service, "algo", body) == "field 'name' is not valid UTF-8"


@pytest.mark.parametrize("size", ["-1", "1.5", "ten", "²", ""])
def test_aSizeThatIsNotANonNegativeIntegerIs400(service: Service, size: str) -> None:
    error = refused(service, "data", form({"size": size}, BLOB))
    assert "is not a non-negative integer number of bytes" in error or "missing" in error


@pytest.mark.parametrize("bad", ["nope", "1234", "1f01d777-c3f4-4bdd-9c4a-8388860e4c5x"])
def test_aMalformedUUIDFieldIs400(service: Service, bad: str) -> None:
    error = refused(service, "data", form(fieldsFor("data", BLOB, uuid=bad), BLOB))
    assert f"uuid {bad!r} is not a valid uuid" in error


def test_theBlobBeforeARequiredFieldIs400(service: Service) -> None:
    fields = fieldsFor("algo", BLOB)
    name = fields.pop("name")
    body = form(fields, BLOB).replace(f"--{BOUNDARY}--\r\n".encode(), b"")
    body += form({"name": name})
    assert "missing required field name before blob" in refused(service, "algo", body)


def test_aFieldAfterTheBlobIs400(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB).replace(f"--{BOUNDARY}--\r\n".encode(), b"")
    body += form({"uuid": newUUID()})
    error = refused(service, "data", body)
    assert error == "field 'uuid' follows blob: blob must be the last field"


def test_aBodyWithoutItsClosingBoundaryIs400(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB).replace(f"--{BOUNDARY}--\r\n".encode(), b"")
    assert "closing boundary" in refused(service, "data", body)


@pytest.mark.parametrize(("actual", "word"), [(10, "shorter"), (30, "longer")])
def test_aBlobNotOfItsSizeIs400(service: Service, actual: int, word: str) -> None:
    blob = os.urandom(actual)
    error = refused(service, "data", form({"size": "20"}, blob))
    assert error == f"the blob is {word} than its announced size of 20 bytes"


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", "text/plain; boundary=x"])
def test_notMultipartIs400(service: Service, ctype: str) -> None:
    reply = service.request("POST", "/data", b"{}", {"Content-Type": ctype})
    assert reply.code == 400
    assert reply.error.startswith("this upload must be multipart/form-data")
    service.assertNothingLeft()


def test_aFormWithoutBoundaryIs400(service: Service) -> None:
    reply = service.request("POST", "/data", b"{}", {"Content-Type": "multipart/form-data"})
    assert (reply.code, reply.error) == (
        400,
        "a multipart/form-data body needs a boundary: Content-Type: multipart/form-data;"
        " boundary=...",
    )
    service.assertNothingLeft()


@pytest.mark.parametrize(
    "boundary", ['""', "", '"', "x" * 71, "a<b", "bad\x7f", '"ends-with-space "', '"\u00e9"']
)
def test_aBoundaryOutsideRFC2046Is400(service: Service, boundary: str) -> None:
    ctype = f"multipart/form-data; boundary={boundary}"
    reply = service.request("POST", "/data", b"--\r\n", {"Content-Type": ctype})
    assert reply.code == 400
    assert reply.error.startswith("the multipart/form-data boundary must be 1 to 70 letters")
    service.assertNothingLeft()


@pytest.mark.parametrize("boundary", [BOUNDARY, f'"{BOUNDARY}"', f'" {BOUNDARY}"', "x" * 70])
def test_aBoundaryQuotedOrNotIsTaken(service: Service, boundary: str) -> None:
    inner = boundary.strip('"')
    blob = b"some bytes"
    body = form(fieldsFor("data", blob), blob).replace(BOUNDARY.encode(), inner.encode())
    ctype = f"multipart/form-data; boundary={boundary}"
    reply = service.request("POST", "/data", body, {"Content-Type": ctype})
    assert reply.code == 201, reply.body


def test_aMalformedMultipartBodyIs400(service: Service) -> None:
    body = f"--{BOUNDARY}\r\nno headers here\r\n\r\n".encode()
    assert refused(service, "data", body).startswith("the multipart body is malformed")


def test_aFormsRequestDigestIsRefused(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB)
    error = refused(service, "data", body, headers={"Content-MD5": "x"})
    assert error.startswith("a form's Repr-Digest or Content-MD5 would be the whole form's")


# Stated digests


def test_aMatchingSHA256FieldIsAccepted(service: Service) -> None:
    fields = fieldsFor("data", BLOB, sha256=sha256(BLOB))
    assert post(service, "data", form(fields, BLOB))[0] == 201


def test_aWrongSHA256FieldIs400AndKeepsNothing(service: Service) -> None:
    fields = fieldsFor("data", BLOB, sha256=sha256(b"other"))
    error = refused(service, "data", form(fields, BLOB))
    assert error == "the blob does not match its stated sha256: nothing was stored"


@pytest.mark.parametrize("bad", ["abc", "g" * 64, sha256(BLOB).upper() + "0"])
def test_aMalformedSHA256FieldIs400(service: Service, bad: str) -> None:
    error = refused(service, "data", form(fieldsFor("data", BLOB, sha256=bad), BLOB))
    assert "sha256" in error


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


#: How a digest is stated: the header, its value for BLOB and for other
#: bytes, and the name a mismatch is refused with.
SHA256 = (
    "Repr-Digest",
    f"sha-256=:{b64(hashlib.sha256(BLOB).digest())}:",
    f"sha-256=:{b64(hashlib.sha256(b'x').digest())}:",
    "sha256",
)
SHA512 = (
    "Repr-Digest",
    f"sha-512=:{b64(hashlib.sha512(BLOB).digest())}:",
    f"sha-512=:{b64(hashlib.sha512(b'x').digest())}:",
    "sha-512 Repr-Digest",
)
MD5 = (
    "Content-MD5",
    b64(hashlib.md5(BLOB).digest()),
    b64(hashlib.md5(b"x").digest()),
    "Content-MD5",
)


@pytest.mark.parametrize(("header", "good", "bad", "named"), [SHA256, SHA512, MD5])
def test_digestsStatedOnTheBlobPartAreChecked(
    service: Service, header: str, good: str, bad: str, named: str
) -> None:
    body = form(fieldsFor("data", BLOB), BLOB, **{header: good})
    assert post(service, "data", body)[0] == 201
    before = service.snapshot()
    body = form(fieldsFor("data", BLOB), BLOB, **{header: bad})
    status, error = post(service, "data", body)
    assert (status, error) == (400, MISMATCH.format(named))
    service.assertNothingLeft(before)


@pytest.mark.parametrize(("header", "good", "bad", "named"), [SHA256, MD5])
def test_digestsStatedOnAModelAreChecked(
    service: Service, header: str, good: str, bad: str, named: str
) -> None:
    algo = service.algo()
    ok = service.request("POST", f"/model?algo={algo}", BLOB, {header: good})
    assert ok.code == 201
    before = service.snapshot()
    reply = service.request("POST", f"/model?algo={algo}", BLOB, {header: bad})
    assert (reply.code, reply.error) == (
        400,
        f"the blob does not match its stated {named}: nothing was stored",
    )
    service.assertNothingLeft(before)


def test_aSHA256FieldAndARepr_DigestThatDisagreeAre400(service: Service) -> None:
    fields = fieldsFor("data", BLOB, sha256=sha256(BLOB))
    body = form(fields, BLOB, **{"Repr-Digest": f"sha-256=:{b64(hashlib.sha256(b'x').digest())}:"})
    assert "disagree" in refused(service, "data", body)


# Models


def test_aModelIsTheRawBodyOfItsAlgo(service: Service) -> None:
    algo = service.algo()
    uuid = newUUID()
    reply = service.request(
        "POST", f"/model?algo={algo}&uuid={uuid}", BLOB, {"Content-Type": "application/x-tar"}
    )
    assert reply.code == 201
    assert reply.json() == {
        "uuid": uuid,
        "timestamp_upload": reply.json()["timestamp_upload"],
        "algo": algo,
        "size": len(BLOB),
        "sha256": sha256(BLOB),
    }
    blob = service.request("GET", f"/model/{uuid}/blob")
    assert (blob.body, blob.header("content-type")) == (BLOB, "application/x-tar")


def test_aFormContentTypeSaysNothingOfAModel(service: Service) -> None:
    algo = service.algo()
    reply = service.request(
        "POST",
        f"/model?algo={algo}",
        BLOB,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    uuid = reply.json()["uuid"]
    blob = service.request("GET", f"/model/{uuid}/blob")
    assert blob.header("content-type") == "application/octet-stream"


def test_aModelNeedsItsAlgo(service: Service) -> None:
    reply = service.request("POST", "/model", BLOB)
    assert (reply.code, reply.error) == (
        400,
        "missing required field algo: POST /model?algo={algo uuid}",
    )
    service.assertNothingLeft()


def test_aModelOfAnUnknownAlgoIs404(service: Service) -> None:
    algo = newUUID()
    reply = service.request("POST", f"/model?algo={algo}", BLOB)
    assert (reply.code, reply.error) == (404, f"there is no algo {algo} to attach this model to")
    service.assertNothingLeft()


def test_aModelOfAMalformedAlgoIs400(service: Service) -> None:
    reply = service.request("POST", "/model?algo=nope", BLOB)
    assert reply.code == 400
    assert reply.error.startswith("algo 'nope' is not a valid uuid")


def test_aModelTakesOnlyAlgoAndUUID(service: Service) -> None:
    reply = service.request("POST", f"/model?algo={service.algo()}&name=x", BLOB)
    assert (reply.code, reply.error) == (
        400,
        "unknown field 'name': a model upload takes algo and uuid",
    )


def test_aTakenModelUUIDIs409(service: Service) -> None:
    algo = service.algo()
    uuid = newUUID()
    assert service.request("POST", f"/model?algo={algo}&uuid={uuid}", BLOB).code == 201
    before = service.snapshot()
    reply = service.request("POST", f"/model?algo={algo}&uuid={uuid}", b"x")
    assert (reply.code, reply.error) == (409, f"model {uuid} already exists (or is being uploaded)")
    service.assertNothingLeft(before)


# Limits


def test_aFormLargerThanTheMaximumIs413FromItsSizeField() -> None:
    service = Service(maxBlobSize=100)
    error = refused(service, "data", form({"size": "101"}, os.urandom(101)), code=413)
    assert error == "the blob is larger than the maximum of 100 bytes"
    assert service.upload("data", os.urandom(100)).code == 201


def test_aModelLargerThanTheMaximumIs413FromItsLength() -> None:
    service = Service(maxBlobSize=100)
    algo = service.algo()
    before = service.snapshot()
    reply = service.request("POST", f"/model?algo={algo}", os.urandom(101))
    assert (reply.code, reply.error) == (413, "the blob is larger than the maximum of 100 bytes")
    service.assertNothingLeft(before)


def test_aFormBodyFarLargerThanTheMaximumIs413FromItsLength() -> None:
    service = Service(maxBlobSize=100)
    body = form({"size": "100"}, os.urandom(100_000))
    assert refused(service, "data", body, code=413).startswith("the blob is larger")
