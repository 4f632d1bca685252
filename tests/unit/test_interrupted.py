"""
Uploads interrupted in the middle, in memory: a store that fails while the
blob streams in, a client that goes away, and a uuid still being uploaded
(a pending claim) seen by the requests that come meanwhile.  Nothing is
left behind, or only a claim that the sweep gives back.
"""

from __future__ import annotations

import pytest

from morpheo.objects import CLAIM_LEASE

from .harness import END, FORM_TYPE, Connection, Service, fieldsFor, form, newUUID, status

BLOB = b"x" * 1000
STORE_DOWN = "the blob store (mock) failed; try again later"


def finish(connection: Connection, kind: str, uuid: str) -> int:
    """Send the rest of L{Service.startUpload}'s body; the status it gets."""
    body = form(fieldsFor(kind, BLOB, uuid=uuid), BLOB)
    return status(connection.send(body[-len(END) - 100 :]))


@pytest.mark.parametrize("kind", ["algo", "data", "prediction", "problem"])
def test_aStoreFailingMidUploadIs500AndLeavesNothing(service: Service, kind: str) -> None:
    uuid = newUUID()
    connection = service.startUpload(kind, uuid)
    service.blobs.down = True
    assert finish(connection, kind, uuid) == 500
    assert STORE_DOWN.encode() in connection.received
    service.assertNothingLeft()


def test_theDatabaseFailingMidUploadIs503AndItsLeftoversAreSweptAfterTheLease(
    service: Service,
) -> None:
    uuid = newUUID()
    connection = service.startUpload("data", uuid)
    service.metadata.goDown("the metadata database is not connected")
    assert finish(connection, "data", uuid) == 503
    assert b"the metadata database is not connected" in connection.received
    service.metadata.comeBack()
    # Whether the completion reached the database is not known to the
    # service: the blob is kept, and the claim (never visible) expires.
    # The sweep finds it still pending, so removes both.
    assert service.rows() == [("data", uuid, "pending")]
    assert len(service.blobKeys()) == 1
    assert service.request("GET", f"/data/{uuid}").code == 404
    service.advance(CLAIM_LEASE + 1)
    service.run(service.objects.sweep())
    service.assertNothingLeft()


def test_aClientGoneMidUploadLeavesNothing(service: Service) -> None:
    service.startUpload("data", newUUID()).close()
    service.assertNothingLeft()


def test_theUUIDOfAFailedUploadIsFreeAgain(service: Service) -> None:
    uuid = newUUID()
    service.blobs.down = True
    assert service.upload("data", BLOB, uuid=uuid).code == 500
    service.blobs.down = False
    assert service.stored("data", BLOB, uuid=uuid)["uuid"] == uuid


def test_aUUIDBeingUploadedIs409(service: Service) -> None:
    uuid = newUUID()
    service.startUpload("data", uuid)
    before = service.snapshot()
    reply = service.upload("data", BLOB, uuid=uuid)
    assert (reply.code, reply.error) == (409, f"data {uuid} already exists (or is being uploaded)")
    service.assertNothingLeft(before)


def test_aModelOfAnAlgoStillBeingUploadedIs404(service: Service) -> None:
    algo = newUUID()
    service.startUpload("algo", algo)
    before = service.snapshot()
    reply = service.upload("model", b"m", algo=algo)
    assert (reply.code, reply.error) == (404, f"there is no algo {algo} to attach this model to")
    service.assertNothingLeft(before)


def test_anUploadInProgressCannotBeRead(service: Service) -> None:
    uuid = newUUID()
    service.startUpload("data", uuid)
    for path in (f"/data/{uuid}", f"/data/{uuid}/blob"):
        assert service.request("GET", path).code == 404
    assert service.request("DELETE", f"/data/{uuid}").code == 404


def test_renamingAProblemOntoAUUIDBeingUploadedIs409(service: Service) -> None:
    problem = service.stored("problem", BLOB)["uuid"]
    other = newUUID()
    service.startUpload("problem", other)
    before = service.snapshot()
    body = form({"uuid": other})
    reply = service.request("PATCH", f"/problem/{problem}", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 409
    assert reply.error == f"problem {other} already exists (or is being uploaded)"
    service.assertNothingLeft(before)


def test_theUploadCutShortFinishesWhenTheRestComes(service: Service) -> None:
    uuid = newUUID()
    connection = service.startUpload("data", uuid)
    assert finish(connection, "data", uuid) == 201
    assert service.rows() == [("data", uuid, "ready")]
