"""
The reading routes in memory: the route list, liveness and readiness,
metadata, lists, and the 401s and 404s every data route shares.
"""

from __future__ import annotations

import pytest

from morpheo import KINDS

from .harness import PASSWORD, USER, Service, newUUID

DATA_ROUTES = [
    ("GET", "/{kind}"),
    ("POST", "/{kind}"),
    ("GET", "/{kind}/{uuid}"),
    ("HEAD", "/{kind}/{uuid}"),
    ("DELETE", "/{kind}/{uuid}"),
    ("GET", "/{kind}/{uuid}/blob"),
    ("HEAD", "/{kind}/{uuid}/blob"),
]


def test_theRootListsTheRoutes(service: Service) -> None:
    reply = service.request("GET", "/", auth=None)
    assert reply.code == 200
    assert reply.json() == [
        "GET /",
        "GET /health",
        "GET /ready",
        "GET /{kind}",
        "POST /{kind}",
        "GET /{kind}/{uuid}",
        "DELETE /{kind}/{uuid}",
        "GET /{kind}/{uuid}/blob",
        "PATCH /problem/{uuid}",
        "POST /uploads",
        "PATCH /uploads/{uploadId}",
        "DELETE /uploads/{uploadId}",
    ]


def test_healthAnswersWithoutCredentials(service: Service) -> None:
    reply = service.request("GET", "/health", auth=None)
    assert (reply.code, reply.json()) == (200, {"status": "ok"})


def test_readyWhenBothStoresAnswer(service: Service) -> None:
    reply = service.request("GET", "/ready", auth=None)
    assert (reply.code, reply.json()) == (
        200,
        {"status": "ready", "database": "ok", "blobstore": "ok"},
    )


def test_notReadyNamesTheDatabaseWhenItIsDown(service: Service) -> None:
    """Without a word of why: that is for the log.  Liveness is not readiness."""
    service.metadata.goDown('connection to server on socket "/run/postgresql/.s.PGSQL.5432"')
    reply = service.request("GET", "/ready", auth=None)
    assert (reply.code, reply.json()) == (
        503,
        {"status": "not ready", "database": "unavailable", "blobstore": "ok"},
    )
    assert service.request("GET", "/health", auth=None).code == 200
    service.metadata.comeBack()
    assert service.request("GET", "/ready", auth=None).code == 200


def test_notReadyNamesTheBlobStoreWhenItIsDown(service: Service) -> None:
    service.blobs.down = True
    reply = service.request("GET", "/ready", auth=None)
    report = reply.json()
    assert reply.code == 503
    assert report["database"] == "ok"
    assert report["blobstore"] == "unavailable"


@pytest.mark.parametrize(("method", "path"), DATA_ROUTES)
def test_dataRoutesNeedCredentials(service: Service, method: str, path: str) -> None:
    reply = service.request(method, path.format(kind="data", uuid=newUUID()), auth=None)
    assert reply.code == 401
    assert reply.header("www-authenticate") == 'Basic realm="morpheo-storage", charset="UTF-8"'
    if method != "HEAD":
        assert "Basic credentials" in reply.error


@pytest.mark.parametrize(("method", "path"), DATA_ROUTES)
def test_wrongPasswordsAre401(service: Service, method: str, path: str) -> None:
    reply = service.request(
        method, path.format(kind="data", uuid=newUUID()), auth=(USER, PASSWORD + "x")
    )
    assert reply.code == 401
    if method != "HEAD":
        assert reply.error == "wrong user name or password"


@pytest.mark.parametrize(("method", "path"), DATA_ROUTES)
def test_credentialsComeBeforeTheUnknownKind(service: Service, method: str, path: str) -> None:
    """A stranger learns nothing, not even which kinds exist."""
    path = path.format(kind="nokind", uuid=newUUID())
    assert service.request(method, path, auth=None).code == 401
    reply = service.request(method, path)
    assert reply.code == 404
    if method != "HEAD":
        assert reply.error.startswith("unknown kind 'nokind': one of algo, data, model")


def test_anUnknownRouteIs404(service: Service) -> None:
    reply = service.request("GET", "/data/a/b/c")
    assert (reply.code, reply.error) == (404, "no such route; GET / lists them")


def test_aMethodNotAllowedNamesTheAllowedOnes(service: Service) -> None:
    reply = service.request("PUT", "/data")
    assert reply.code == 405
    assert reply.header("allow") is not None
    assert "POST" in (reply.header("allow") or "")
    assert reply.error.startswith("method not allowed here; allowed:")


def test_patchIsOnlyForProblems(service: Service) -> None:
    assert service.request("PATCH", f"/algo/{newUUID()}").code == 405


@pytest.mark.parametrize("kind", KINDS)
def test_anEmptyListIsOnePageOfNothing(service: Service, kind: str) -> None:
    reply = service.request("GET", f"/{kind}")
    assert (reply.code, reply.json()) == (200, {"page": 0, "length": 0, "items": [], "next": None})


@pytest.mark.parametrize("kind", KINDS)
def test_anUnknownUUIDIs404(service: Service, kind: str) -> None:
    uuid = newUUID()
    reply = service.request("GET", f"/{kind}/{uuid}")
    assert (reply.code, reply.error) == (404, f"there is no {kind} {uuid}")
    assert service.request("GET", f"/{kind}/{uuid}/blob").code == 404


@pytest.mark.parametrize("bad", ["not-a-uuid", "1f01d777-c3f4-4bdd-9c4a-8388860e4c5", "+" * 36])
def test_aMalformedUUIDIs400(service: Service, bad: str) -> None:
    reply = service.request("GET", f"/data/{bad}")
    assert reply.code == 400
    assert "is not a valid uuid" in reply.error
