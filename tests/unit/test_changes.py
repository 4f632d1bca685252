"""
Changing and deleting in memory: PATCH of a problem (rename, text, new
blob, all at once, guarded by If-Match), DELETE (and an algo kept while
models use it); nothing left behind when a change is refused.
"""

from __future__ import annotations

import os

import pytest

from morpheo import KINDS

from .harness import FORM_TYPE, Service, form, newUUID, sha256

BLOB = os.urandom(3000)


def patch(
    service: Service,
    uuid: str,
    fields: dict[str, str],
    blob: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, object] | str]:
    headers = {"Content-Type": FORM_TYPE, **(headers or {})}
    reply = service.request("PATCH", f"/problem/{uuid}", form(fields, blob), headers)
    return reply.code, reply.error if reply.code >= 400 else reply.json()


@pytest.fixture
def problem(service: Service) -> dict[str, object]:
    return service.stored("problem", BLOB)


def test_patchChangesTheTextFields(service: Service, problem: dict[str, object]) -> None:
    code, document = patch(service, str(problem["uuid"]), {"description": "greater"})
    assert code == 200
    assert document == {**problem, "description": "greater"}
    assert service.request("GET", f"/problem/{problem['uuid']}").json() == document


def test_patchRenamesAndTheBlobFollows(service: Service, problem: dict[str, object]) -> None:
    new = newUUID()
    code, document = patch(service, str(problem["uuid"]), {"uuid": new, "name": "renamed"})
    assert code == 200
    assert document == {**problem, "uuid": new, "name": "renamed"}
    assert service.request("GET", f"/problem/{problem['uuid']}").code == 404
    assert service.request("GET", f"/problem/{new}/blob").body == BLOB
    assert len(service.rows()) == 1


def test_patchReplacesTheBlobAndRemovesTheOld(service: Service, problem: dict[str, object]) -> None:
    (oldKey,) = service.blobKeys()
    blob = os.urandom(500)
    code, document = patch(service, str(problem["uuid"]), {"size": str(len(blob))}, blob)
    assert code == 200
    assert isinstance(document, dict)
    assert (document["size"], document["sha256"]) == (len(blob), sha256(blob))
    assert service.request("GET", f"/problem/{problem['uuid']}/blob").body == blob
    assert oldKey not in service.blobKeys()
    assert len(service.blobKeys()) == 1


def test_patchDoesEverythingAtOnce(service: Service, problem: dict[str, object]) -> None:
    new, blob = newUUID(), os.urandom(10)
    fields = {"uuid": new, "name": "n", "description": "d", "size": str(len(blob)),
              "sha256": sha256(blob)}  # fmt: skip
    code, document = patch(service, str(problem["uuid"]), fields, blob)
    assert code == 200
    assert isinstance(document, dict)
    assert (document["uuid"], document["name"], document["description"]) == (new, "n", "d")
    assert service.request("GET", f"/problem/{new}/blob").body == blob


def test_patchOntoATakenUUIDIs409AndChangesNothing(service: Service) -> None:
    first, second = service.stored("problem", BLOB), service.stored("problem", BLOB)
    before = service.snapshot()
    code, error = patch(service, str(first["uuid"]), {"uuid": str(second["uuid"]), "name": "x"})
    assert (code, error) == (409, f"problem {second['uuid']} already exists (or is being uploaded)")
    service.assertNothingLeft(before)
    assert service.request("GET", f"/problem/{first['uuid']}").json() == first


def test_patchWithABadBlobChangesNothing(service: Service, problem: dict[str, object]) -> None:
    before = service.snapshot()
    code, error = patch(service, str(problem["uuid"]), {"uuid": newUUID(), "size": "5"}, b"abc")
    assert (code, error) == (400, "the blob is shorter than its announced size of 5 bytes")
    service.assertNothingLeft(before)
    assert service.request("GET", f"/problem/{problem['uuid']}").json() == problem


def test_patchWithAWrongDigestChangesNothing(service: Service, problem: dict[str, object]) -> None:
    before = service.snapshot()
    fields = {"size": "3", "sha256": sha256(b"xyz")}
    code, error = patch(service, str(problem["uuid"]), fields, b"abc")
    assert (code, error) == (400, "the blob does not match its stated sha256: nothing was stored")
    service.assertNothingLeft(before)


def test_patchOfAnUnknownProblemIs404(service: Service) -> None:
    uuid = newUUID()
    assert patch(service, uuid, {"name": "x"}) == (404, f"there is no problem {uuid}")


def test_patchWithAnUnknownFieldIs400(service: Service, problem: dict[str, object]) -> None:
    code, error = patch(service, str(problem["uuid"]), {"colour": "red"})
    assert code == 400
    assert isinstance(error, str) and error.startswith("unknown field 'colour'")


def test_patchWithASizeButNoBlobIs400(service: Service, problem: dict[str, object]) -> None:
    assert patch(service, str(problem["uuid"]), {"size": "3"}) == (
        400,
        "size is given but no blob follows it",
    )


def test_patchGuardedByIfMatch(service: Service, problem: dict[str, object]) -> None:
    uuid = str(problem["uuid"])
    code, error = patch(service, uuid, {"name": "x"}, headers={"If-Match": '"other"'})
    assert (code, error) == (412, f"problem {uuid} is not the version this change was made for")
    code, _ = patch(service, uuid, {"name": "x"}, headers={"If-Match": f'"{problem["sha256"]}"'})
    assert code == 200


def test_patchThatIsNotMultipartIs400(service: Service, problem: dict[str, object]) -> None:
    reply = service.request("PATCH", f"/problem/{problem['uuid']}", b"{}")
    assert reply.code == 400
    assert reply.error.startswith("this upload must be multipart/form-data")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "model"])
def test_deleteRemovesTheRowAndTheBlob(service: Service, kind: str) -> None:
    document = service.stored(kind, BLOB)
    reply = service.request("DELETE", f"/{kind}/{document['uuid']}")
    assert (reply.code, reply.json()) == (200, document)
    assert service.request("GET", f"/{kind}/{document['uuid']}").code == 404
    service.assertNothingLeft()


def test_deleteAModel(service: Service) -> None:
    algo = service.algo()
    before = service.snapshot()
    model = service.request("POST", f"/model?algo={algo}", BLOB).json()
    assert service.request("DELETE", f"/model/{model['uuid']}").json() == model
    service.assertNothingLeft(before)


def test_deletingAnAlgoThatModelsUseIs409(service: Service) -> None:
    algo = service.algo()
    models = [service.request("POST", f"/model?algo={algo}", BLOB).json()["uuid"] for _ in "ab"]
    reply = service.request("DELETE", f"/algo/{algo}")
    assert reply.code == 409
    assert reply.error == f"algo {algo} is used by models {', '.join(models)}: delete them first"
    for model in models:
        assert service.request("DELETE", f"/model/{model}").code == 200
    assert service.request("DELETE", f"/algo/{algo}").code == 200
    service.assertNothingLeft()


def test_deleteOfAnUnknownUUIDIs404(service: Service) -> None:
    uuid = newUUID()
    reply = service.request("DELETE", f"/data/{uuid}")
    assert (reply.code, reply.error) == (404, f"there is no data {uuid}")


def test_deleteGuardedByIfMatch(service: Service) -> None:
    document = service.stored("data", BLOB)
    path = f"/data/{document['uuid']}"
    reply = service.request("DELETE", path, headers={"If-Match": '"other"'})
    assert (reply.code, reply.error) == (
        412,
        f"data {document['uuid']} is not the version this deletion was made for",
    )
    assert service.request("GET", path).code == 200
    assert service.request("DELETE", path, headers={"If-Match": "*"}).code == 200
