"""
In memory: what a client sees when a store fails (503 naming the
database, 500 naming the local blob store) with nothing left behind; and
CORS as the original service does it.
"""

from __future__ import annotations

import os

import pytest

from morpheo._errors import DATABASE_UNAVAILABLE

from .harness import FORM_TYPE, Service, fieldsFor, form

BLOB = os.urandom(2000)
DRIVER_SAID = (
    'psycopg2.OperationalError: connection to server on socket "/run/postgresql/.s.PGSQL.5432"'
    " failed: server closed the connection unexpectedly"
)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/data"), ("GET", "/data/{uuid}"), ("GET", "/data/{uuid}/blob"),
     ("DELETE", "/data/{uuid}")],
)  # fmt: skip
def test_aDatabaseThatIsDownIs503(service: Service, method: str, path: str) -> None:
    """The error says which part failed; never what the driver said (the log does)."""
    uuid = service.stored("data", BLOB)["uuid"]
    service.metadata.goDown(detail=DRIVER_SAID)
    reply = service.request(method, path.format(uuid=uuid))
    assert (reply.code, reply.json()) == (503, {"error": DATABASE_UNAVAILABLE})
    service.metadata.comeBack()
    assert service.request("GET", f"/data/{uuid}").code == 200


def test_anUploadWhileTheDatabaseIsDownIs503AndKeepsNothing(service: Service) -> None:
    service.metadata.goDown(detail=DRIVER_SAID)
    reply = service.upload("data", BLOB)
    assert (reply.code, reply.json()) == (503, {"error": DATABASE_UNAVAILABLE})
    service.metadata.comeBack()
    service.assertNothingLeft()


def test_aBlobStoreThatIsDownIs500NamingIt(service: Service) -> None:
    uuid = service.stored("data", BLOB)["uuid"]
    service.blobs.down = True
    reply = service.request("GET", f"/data/{uuid}/blob")
    assert (reply.code, reply.error) == (
        500,
        "the blob store (mock) failed; try again later",
    )


def test_anUploadToABlobStoreThatIsDownKeepsNothing(service: Service) -> None:
    service.blobs.down = True
    reply = service.upload("data", BLOB)
    assert reply.code == 500
    assert reply.error.startswith("the blob store (mock) failed")
    service.blobs.down = False
    service.assertNothingLeft()


def test_aDeleteWhoseBlobCannotBeRemovedStillDeletesTheRow(service: Service) -> None:
    """The row goes first: an unreferenced blob is swept later, never a row without blob."""
    uuid = service.stored("data", BLOB)["uuid"]
    service.blobs.down = True
    assert service.request("DELETE", f"/data/{uuid}").code == 200
    service.blobs.down = False
    assert service.rows() == []


def test_anyOriginIsAllowedByDefault(service: Service) -> None:
    reply = service.request("GET", "/data", headers={"Origin": "https://app.example"})
    assert reply.header("access-control-allow-origin") == "*"
    exposed = reply.header("access-control-expose-headers") or ""
    for name in ("ETag", "Repr-Digest", "Content-Disposition", "WWW-Authenticate"):
        assert name in exposed
    assert service.request("GET", "/data").header("access-control-allow-origin") is None


@pytest.mark.parametrize(
    "path",
    [
        "/data",
        "/data/1f01d777-c3f4-4bdd-9c4a-8388860e4c5e",
        "/problem/9f86d081-884c-4d63-9c4a-8388860e4c5e",
    ],
)
def test_aPreflightNeedsNoCredentials(service: Service, path: str) -> None:
    reply = service.request(
        "OPTIONS",
        path,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization, content-type, if-match, range",
        },
        auth=None,
    )
    assert (reply.code, reply.body) == (204, b"")
    assert reply.header("access-control-allow-origin") == "*"
    methods = reply.header("access-control-allow-methods") or ""
    for method in ("GET", "POST", "PATCH", "DELETE"):
        assert method in methods
    allowed = (reply.header("access-control-allow-headers") or "").lower()
    for name in ("authorization", "content-type", "if-match", "range"):
        assert name in allowed
    assert reply.header("access-control-max-age")
    assert reply.header("www-authenticate") is None


def test_errorsCarryTheCORSHeadersToo(service: Service) -> None:
    origin = {"Origin": "https://app.example"}
    assert (
        service.request("GET", "/data", headers=origin, auth=None).header(
            "access-control-allow-origin"
        )
        == "*"
    )
    body = form(fieldsFor("data", BLOB, size="1"), BLOB)
    reply = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE, **origin})
    assert reply.code == 400
    assert reply.header("access-control-allow-origin") == "*"


def test_configuredOriginsAreTheOnlyOnesAllowed() -> None:
    service = Service(corsOrigins=("https://a.example", "https://b.example"))
    for origin in ("https://a.example", "https://b.example"):
        reply = service.request("GET", "/data", headers={"Origin": origin})
        assert reply.header("access-control-allow-origin") == origin
        assert reply.header("vary") == "Origin"
    stranger = service.request("GET", "/data", headers={"Origin": "https://evil.example"})
    assert stranger.code == 200
    assert stranger.header("access-control-allow-origin") is None
    assert stranger.header("access-control-expose-headers") is None
