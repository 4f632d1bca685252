"""
Resumable uploads at C{/uploads}, in memory: the protocols' headers parsed
apart from any I/O, then tus 1.0.0 and the IETF draft through the real
routes (a resource appears like a plain upload's, checksums, offsets,
deferred lengths, concatenation, cancellation, expiry, a cut request, who
may see an upload, limits).
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid as _uuid
from collections.abc import Mapping

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

from morpheo._errors import APIError
from morpheo._types import Concat
from morpheo.web._resumable import (
    INTEROP_VERSION,
    encodeMetadata,
    newUploadOf,
    parseBoolean,
    parseChecksum,
    parseConcat,
    parseCount,
    parseMetadata,
    uploadIdOf,
    uploadLimit,
)

from .harness import PASSWORD, USER, Reply, Service, request, statuses

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}
IETF = {"Upload-Draft-Interop-Version": str(INTEROP_VERSION)}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def meta(**fields: str) -> str:
    return ",".join(f"{k.replace('_', '-')} {b64(v)}" for k, v in fields.items())


def create(
    service: Service,
    length: int | None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    **fields: str,
) -> Reply:
    head = {**TUS, "Upload-Metadata": meta(**({"kind": "data"} | fields))}
    if length is None:
        head["Upload-Defer-Length"] = "1"
    else:
        head["Upload-Length"] = str(length)
    if body is not None:
        head["Content-Type"] = "application/offset+octet-stream"
    return service.request("POST", "/uploads", body, {**head, **(headers or {})})


def patch(service: Service, location: str, offset: int, data: bytes, **headers: str) -> Reply:
    head = {**CHUNK, "Upload-Offset": str(offset)}
    head.update({k.replace("_", "-"): v for k, v in headers.items()})
    return service.request("PATCH", location, data, head)


def location(reply: Reply) -> str:
    assert reply.code == 201, (reply.code, reply.body)
    found = reply.header("location")
    assert found is not None and found.startswith("/uploads/")
    return found


# The headers, parsed


def test_metadataIsPairsOfAKeyAndBase64() -> None:
    assert parseMetadata(f"kind {b64('data')},name {b64('é x')},empty") == {
        "kind": "data",
        "name": "é x",
        "empty": "",
    }
    assert parseMetadata("") == {}
    assert parseMetadata(encodeMetadata({"a": "1", "b": ""})) == {"a": "1", "b": ""}
    for bad in (
        "kind data!",
        "kind a b",
        f"kind {b64('x')},kind {b64('y')}",
        "k\x01 YQ==",
        f"name {b64('a' + chr(0))}",
    ):
        with pytest.raises(APIError) as e:
            parseMetadata(bad)
        assert e.value.code == 400


def test_countsBooleansChecksumsAndConcatenation() -> None:
    assert parseCount(" 42 ", "Upload-Offset") == 42
    for bad in ("-1", "1.0", "", "1" * 16, "٣"):
        with pytest.raises(APIError):
            parseCount(bad, "Upload-Offset")
    assert parseBoolean("?1") is True and parseBoolean("?0;x=1") is False
    assert parseBoolean("true") is None and parseBoolean("1") is None
    assert parseChecksum("sha1 " + base64.b64encode(b"x" * 20).decode()) == ("sha1", b"x" * 20)
    for bad in ("crc32 AAAA", "sha1 !!", "sha256"):
        with pytest.raises(APIError):
            parseChecksum(bad)
    one, two = "A" * 22, "B" * 22
    assert parseConcat("partial") == (Concat.PARTIAL, [])
    assert parseConcat(f"final;/uploads/{one} http://h:1/x/uploads/{two}") == (
        Concat.FINAL,
        [one, two],
    )
    for bad in ("final;", "final;/data/x", "whole", f"final;/uploads/{one}/../x"):
        with pytest.raises(APIError):
            parseConcat(bad)
    assert uploadIdOf(f"https://storage.example/uploads/{one}/") == one
    assert uploadLimit(100, 60) == "max-size=100, max-age=60"
    assert uploadLimit(None, None) == "min-size=0"


def test_metadataHoldsTheResourceToTheRulesOfAPlainUpload() -> None:
    algo = str(_uuid.uuid4())
    new = newUploadOf({"kind": "model", "algo": algo.upper(), "filename": "m.bin"}, 3)
    assert (new.kind, new.parent, new.label.filename, new.length) == ("model", algo, "m.bin", 3)
    problem = newUploadOf({"kind": "problem", "name": "n", "description": "d"}, None)
    assert problem.text == {"name": "n", "description": "d"}
    assert newUploadOf({}, 5, Concat.PARTIAL).kind is None
    for bad in (
        {},
        {"kind": "nothing"},
        {"kind": "model"},
        {"kind": "problem", "name": "n"},
        {"kind": "data", "name": "n"},
        {"kind": "data", "colour": "red"},
        {"kind": "data", "uuid": "not-a-uuid"},
        {"kind": "data", "sha256": "abc"},
        {"kind": "data", "filetype": "text/csv", "content-type": "text/plain"},
    ):
        with pytest.raises(APIError) as e:
            newUploadOf(bad, 1)
        assert e.value.code == 400, bad


def test_filetypeIsTheContentTypeAsTusClientsSendIt() -> None:
    """
    tus-js-client's documentation sends the file's media type as
    C{filetype}: it is the content type, and what the client gave is what
    HEAD gives back.
    """
    given = {"kind": "data", "filename": "d.csv", "filetype": "text/csv"}
    new = newUploadOf(given, 3)
    assert (new.label.contentType, new.label.filename) == ("text/csv", "d.csv")
    assert new.metadata == given
    same = newUploadOf({"kind": "data", "filetype": "text/csv", "content-type": "text/csv"}, 3)
    assert same.label.contentType == "text/csv"
    assert newUploadOf({"filetype": "text/csv"}, 3, Concat.PARTIAL).metadata == {
        "filetype": "text/csv"
    }


def test_aTusJsClientsUploadIsServedWithItsFiletype(service: Service) -> None:
    blob = b"a,b\n1,2\n"
    reply = create(service, len(blob), body=blob, filename="d.csv", filetype="text/csv")
    assert reply.code == 201, reply.body
    resource = reply.header("morpheo-resource")
    assert resource is not None
    got = service.request("GET", f"{resource}/blob")
    assert got.code == 200 and got.body == blob
    assert got.header("content-type") == "text/csv"
    head = service.request("HEAD", location(reply), headers=TUS)
    assert head.code == 404  # done: the upload is its resource now


# tus through the routes


def test_aTusUploadInPiecesBecomesItsResourceWithItsDigest(service: Service) -> None:
    blob = os.urandom(300_000)
    uuid = str(_uuid.uuid4())
    reply = create(service, len(blob), uuid=uuid, filename="d.bin")
    where = location(reply)
    assert reply.header("morpheo-resource") == f"/data/{uuid}"
    assert reply.header("upload-expires") is not None
    assert service.request("GET", f"/data/{uuid}").code == 404
    offset = 0
    for piece in (blob[:100_000], blob[100_000:250_000], blob[250_000:]):
        reply = patch(service, where, offset, piece)
        assert reply.code == 204, reply.body
        offset = int(reply.header("upload-offset") or -1)
    assert offset == len(blob)
    assert reply.header("morpheo-resource") == f"/data/{uuid}"
    document = service.request("GET", f"/data/{uuid}").json()
    assert document["size"] == len(blob)
    assert document["sha256"] == hashlib.sha256(blob).hexdigest()
    got = service.request("GET", f"/data/{uuid}/blob")
    assert got.body == blob
    assert got.header("content-disposition") is not None
    assert service.request("HEAD", where, headers=TUS).code == 404
    assert service.blobs.openWrites() == {}


def test_headGivesTheOffsetAndWhatTheUploadSaid(service: Service) -> None:
    where = location(create(service, 10))
    patch(service, where, 0, b"12345")
    reply = service.request("HEAD", where, headers=TUS)
    assert reply.code == 200
    assert reply.header("upload-offset") == "5" and reply.header("upload-length") == "10"
    assert parseMetadata(reply.header("upload-metadata") or "") == {"kind": "data"}
    assert reply.header("cache-control") == "no-store"
    assert reply.header("tus-resumable") == "1.0.0"


def test_creationWithUploadAndADeferredLength(service: Service) -> None:
    reply = create(service, None, body=b"abc")
    where = location(reply)
    assert reply.header("upload-offset") == "3"
    assert service.request("HEAD", where, headers=TUS).header("upload-defer-length") == "1"
    reply = patch(service, where, 3, b"def", Upload_Length="6")
    assert reply.code == 204 and reply.header("upload-offset") == "6"
    resource = reply.header("morpheo-resource") or ""
    assert service.request("GET", f"{resource}/blob").body == b"abcdef"


def test_aWholeUploadInItsCreationIsTheResourceAtOnce(service: Service) -> None:
    reply = create(service, 3, body=b"abc")
    assert reply.code == 201
    assert reply.json()["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert reply.header("upload-offset") == "3"


def test_theWrongOffsetIs409WithTheRightOne(service: Service) -> None:
    where = location(create(service, 10))
    patch(service, where, 0, b"1234")
    reply = patch(service, where, 2, b"34567")
    assert reply.code == 409 and reply.header("upload-offset") == "4"
    assert "offset 4" in reply.error


def test_aChunkNotMatchingItsChecksumIs460AndIsDropped(service: Service) -> None:
    where = location(create(service, 8))
    patch(service, where, 0, b"1234")
    wrong = "sha256 " + base64.b64encode(hashlib.sha256(b"nope").digest()).decode()
    reply = patch(service, where, 4, b"5678", Upload_Checksum=wrong)
    assert reply.code == 460 and "Upload-Checksum" in reply.error
    assert service.request("HEAD", where, headers=TUS).header("upload-offset") == "4"
    for offset, piece, algorithm in ((4, b"56", "md5"), (6, b"78", "sha1")):
        digest = base64.b64encode(hashlib.new(algorithm, piece).digest()).decode()
        reply = patch(service, where, offset, piece, Upload_Checksum=f"{algorithm} {digest}")
        assert reply.code == 204, reply.body
    resource = reply.header("morpheo-resource") or ""
    assert service.request("GET", f"{resource}/blob").body == b"12345678"


def test_aCutPatchKeepsWhatArrivedAndTheOffsetSaysSo(service: Service) -> None:
    blob = os.urandom(50_000)
    where = location(create(service, len(blob)))
    connection = service.connect()
    head = {**CHUNK, "Upload-Offset": "0"}
    connection.send(request("PATCH", where, head, blob[:20_000], length=len(blob)))
    connection.abort()
    offset = int(service.request("HEAD", where, headers=TUS).header("upload-offset") or -1)
    assert offset == 20_000
    reply = patch(service, where, offset, blob[offset:])
    assert reply.code == 204
    resource = reply.header("morpheo-resource") or ""
    document = service.request("GET", resource).json()
    assert document["sha256"] == hashlib.sha256(blob).hexdigest()


def test_aStatedSha256ThatDoesNotMatchStoresNothing(service: Service) -> None:
    uuid = str(_uuid.uuid4())
    where = location(create(service, 3, uuid=uuid, sha256="0" * 64))
    reply = patch(service, where, 0, b"abc")
    assert reply.code == 400 and "sha256" in reply.error
    assert service.request("GET", f"/data/{uuid}").code == 404
    assert service.blobs.keys() == []
    assert create(service, 3, uuid=uuid).code == 201  # the uuid is free again


def test_creationIsCheckedAsAPlainUploadIs(service: Service) -> None:
    uuid = str(_uuid.uuid4())
    assert location(create(service, 3, uuid=uuid))
    assert create(service, 3, uuid=uuid).code == 409
    missing = str(_uuid.uuid4())
    assert create(service, 3, kind="model", algo=missing).code == 404
    assert create(service, 3, kind="algo").code == 400
    assert service.request("POST", "/uploads", None, {"Upload-Length": "3"}).code == 412
    assert (
        service.request(
            "POST", "/uploads", None, {**TUS, "Upload-Metadata": meta(kind="data")}
        ).code
        == 400
    )
    limited = Service(maxBlobSize=10)
    reply = create(limited, 11)
    assert reply.code == 413
    deferred = location(create(limited, None))
    assert patch(limited, deferred, 0, b"x" * 11).code == 413


def test_anUploadIsItsOwnersAlone(tmp_path: object) -> None:
    other = InMemoryUsernamePasswordDatabaseDontUse(other=b"other-pass")
    service = Service(checkers=(other,))
    where = location(create(service, 4))
    auth = ("other", "other-pass")
    for method in ("HEAD", "PATCH", "DELETE"):
        reply = service.request(
            method,
            where,
            b"ab" if method == "PATCH" else None,
            {**CHUNK, "Upload-Offset": "0"},
            auth=auth,
        )
        assert reply.code == 404, method
    assert service.request("HEAD", where, headers=TUS, auth=None).code == 401
    assert service.request("OPTIONS", "/uploads", auth=None).code == 401
    assert service.request("HEAD", where, headers=TUS, auth=(USER, PASSWORD)).code == 200


def test_deleteRemovesTheUploadAndFreesItsUUID(service: Service) -> None:
    uuid = str(_uuid.uuid4())
    where = location(create(service, 10, uuid=uuid))
    patch(service, where, 0, b"12345")
    assert service.request("DELETE", where, headers=TUS).code == 204
    assert service.request("HEAD", where, headers=TUS).code == 404
    assert service.blobs.openWrites() == {}
    assert service.request("DELETE", where, headers=TUS).code == 404
    assert location(create(service, 10, uuid=uuid))


def test_unfinishedUploadsExpireAndTheSweepRemovesThem() -> None:
    service = Service(uploadExpiry=30)
    uuid = str(_uuid.uuid4())
    where = location(create(service, 10, uuid=uuid))
    patch(service, where, 0, b"12345")
    service.advance(20)
    patch(service, where, 5, b"67")  # a request pushes the expiry back
    service.advance(20)
    assert service.request("HEAD", where, headers=TUS).code == 200
    service.advance(11)
    assert service.request("HEAD", where, headers=TUS).code == 404
    assert service.run(service.uploads.sweep()) == 1
    assert service.blobs.openWrites() == {}
    assert service.metadata.uploadIds() == []
    assert location(create(service, 10, uuid=uuid))


def test_openUploadsPerUserAreLimited() -> None:
    service = Service(maxOpenUploads=2)
    first = location(create(service, 5))
    location(create(service, 5))
    reply = create(service, 5)
    assert reply.code == 429 and "2 unfinished uploads" in reply.error
    service.request("DELETE", first, headers=TUS)
    assert location(create(service, 5))


def test_partialUploadsAreConcatenatedIntoTheFinalResource(service: Service) -> None:
    parts = [os.urandom(n) for n in (1000, 1, 70_000, 5)]
    wheres = []
    for part in parts:
        reply = service.request(
            "POST",
            "/uploads",
            part,
            {**CHUNK, "Upload-Length": str(len(part)), "Upload-Concat": "partial"},
        )
        wheres.append(location(reply))
    assert service.request("HEAD", wheres[0], headers=TUS).header("upload-concat") == "partial"
    uuid = str(_uuid.uuid4())
    reply = service.request(
        "POST",
        "/uploads",
        None,
        {
            **TUS,
            "Upload-Concat": "final;" + " ".join(wheres),
            "Upload-Metadata": meta(kind="data", uuid=uuid),
        },
    )
    assert reply.code == 201, reply.body
    whole = b"".join(parts)
    assert reply.header("morpheo-resource") == f"/data/{uuid}"
    assert reply.json()["sha256"] == hashlib.sha256(whole).hexdigest()
    assert service.request("GET", f"/data/{uuid}/blob").body == whole
    assert service.request("HEAD", wheres[0], headers=TUS).code == 404
    assert service.blobs.keys() == [service.run(service.metadata.get("data", uuid)).blob_key]  # type: ignore[union-attr]


def test_aFinalUploadNeedsCompletePartsOfItsOwner(service: Service) -> None:
    reply = service.request(
        "POST",
        "/uploads",
        b"ab",
        {**CHUNK, "Upload-Length": "4", "Upload-Concat": "partial"},
    )
    where = location(reply)
    final = {**TUS, "Upload-Concat": f"final;{where}", "Upload-Metadata": meta(kind="data")}
    assert service.request("POST", "/uploads", None, final).code == 409
    assert patch(service, where, 2, b"cd").code == 204
    assert service.request("POST", "/uploads", None, final).code == 201


def test_optionsSayWhatIsSupported(service: Service) -> None:
    reply = service.request("OPTIONS", "/uploads")
    assert reply.code == 204
    assert reply.header("tus-version") == "1.0.0"
    extensions = (reply.header("tus-extension") or "").split(",")
    for extension in (
        "creation",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
        "creation-with-upload",
    ):
        assert extension in extensions
    assert reply.header("tus-checksum-algorithm") == "sha1,sha256,md5"
    assert reply.header("upload-limit") is not None


# The IETF draft through the routes


def test_theDraftsCreationOffsetAndAppending(service: Service) -> None:
    reply = service.request(
        "POST",
        "/uploads",
        b"abc",
        {**IETF, "Upload-Complete": "?0", "Upload-Metadata": meta(kind="data")},
    )
    where = location(reply)
    assert reply.header("upload-complete") == "?0" and reply.header("upload-offset") == "3"
    assert reply.header("upload-limit") is not None
    head = service.request("HEAD", where, headers=IETF)
    assert head.code == 204 and head.header("upload-offset") == "3"
    assert head.header("upload-complete") == "?0"
    service.advance(100)
    limit = service.request("HEAD", where, headers=IETF).header("upload-limit")
    assert limit == f"max-age={24 * 3600 - 100}"
    wrong = service.request(
        "PATCH",
        where,
        b"x",
        {
            **IETF,
            "Content-Type": "application/partial-upload",
            "Upload-Offset": "1",
            "Upload-Complete": "?0",
        },
    )
    assert wrong.code == 409 and wrong.header("upload-offset") == "3"
    assert wrong.header("upload-complete") == "?0"
    done = service.request(
        "PATCH",
        where,
        b"def",
        {
            **IETF,
            "Content-Type": "application/partial-upload",
            "Upload-Offset": "3",
            "Upload-Complete": "?1",
        },
    )
    assert done.code == 200 and done.header("upload-complete") == "?1"
    assert done.json()["sha256"] == hashlib.sha256(b"abcdef").hexdigest()


def test_theDraftsCompleteCreationAndCancellation(service: Service) -> None:
    reply = service.request(
        "POST",
        "/uploads",
        b"whole",
        {**IETF, "Upload-Complete": "?1", "Upload-Metadata": meta(kind="data")},
    )
    assert reply.code == 201 and reply.json()["size"] == 5
    assert reply.header("upload-complete") == "?1"
    where = location(
        service.request(
            "POST",
            "/uploads",
            b"",
            {**IETF, "Upload-Complete": "?0", "Upload-Metadata": meta(kind="data")},
        )
    )
    assert service.request("DELETE", where, headers=IETF).code == 204
    assert service.request("HEAD", where, headers=IETF).code == 404
    old = {"Upload-Draft-Interop-Version": "3", "Upload-Complete": "?0"}
    assert service.request("POST", "/uploads", b"", old).code == 400


def test_theDraftsCreationAnnouncesItselfIn104(service: Service) -> None:
    connection = service.connect()
    head = {**IETF, "Upload-Complete": "?1", "Upload-Metadata": meta(kind="data")}
    raw = connection.send(request("POST", "/uploads", head, b"abc"))
    assert statuses(raw) == [104, 201]
    interim = raw.split(b"\r\n\r\n")[0]
    assert b"Location: /uploads/" in interim and b"Upload-Limit:" in interim


def test_browsersMayUseTheProtocolsHeaders(service: Service) -> None:
    reply = service.request(
        "OPTIONS",
        "/uploads/" + "A" * 22,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable, upload-offset, upload-checksum",
        },
        auth=None,
    )
    allowed = (reply.header("access-control-allow-headers") or "").lower()
    for name in ("tus-resumable", "upload-offset", "upload-checksum", "upload-metadata"):
        assert name in allowed
    where = location(create(service, 5))
    exposed = service.request("HEAD", where, headers={**TUS, "Origin": "https://app.example"})
    names = (exposed.header("access-control-expose-headers") or "").lower()
    for name in ("location", "upload-offset", "morpheo-resource", "upload-expires"):
        assert name in names


def test_twoRequestsNeverAppendToOneUploadAtOnce(service: Service) -> None:
    where = location(create(service, 10))
    first = service.connect()
    head = {**CHUNK, "Upload-Offset": "0"}
    first.send(request("PATCH", where, head, b"12345", length=10))
    second = patch(service, where, 0, b"abc")
    assert second.code == 423 and "another request" in second.error
    assert statuses(first.send(b"67890")) == [204]
    assert service.request("HEAD", where, headers=TUS).code == 404  # finished
    assert len(service.blobs.keys()) == 1


def test_aLongPatchKeepsItsLeaseAliveAndADeadOnesRunsOut() -> None:
    service = Service(claimLease=30)
    where = location(create(service, 10))
    first = service.connect()
    first.send(request("PATCH", where, {**CHUNK, "Upload-Offset": "0"}, b"123", length=10))
    for _ in range(4):
        service.advance(10)
        service.run(service.uploads.keepAlive())
    assert patch(service, where, 0, b"abc").code == 423
    # Its node stops refreshing it (it died): the lease runs out.
    service.uploads._busy.clear()
    service.advance(31)
    taken = patch(service, where, 0, b"abc")
    assert taken.code == 204 and taken.header("upload-offset") == "3"
