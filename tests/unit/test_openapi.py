"""
The OpenAPI document (C{morpheo/web/openapi.json}): valid OpenAPI 3.1,
served at C{/openapi.json} without credentials, naming every route of
L{StorageAPI} and no other, and a checker (L{tests.apidoc}, which the
harness runs on every answer its client gets) that fails on what the
document does not describe, naming the method, the path and the status.
"""

from __future__ import annotations

import base64
import json
import re
from importlib.metadata import version
from importlib.resources import files

import pytest
from openapi_spec_validator import validate

from morpheo.web import StorageAPI
from tests.apidoc import Undocumented, checkAnswer, document, routedMethods

from .harness import FORM_TYPE, Service, fieldsFor, form, newUUID

#: Routes described before the code that serves them lands: the
#: Prometheus metrics (served behind the API's credentials).
AHEAD = {"GET /metrics", "HEAD /metrics"}

ERROR = b'{"error": "no such route; GET / lists them"}\n'
JSON = {"content-type": "application/json"}


def test_theDocumentIsValidOpenAPI31() -> None:
    assert document()["openapi"].startswith("3.1.")
    validate(document())


def test_theDocumentIsOfThisVersion() -> None:
    assert document()["info"]["version"] == version("morpheo-storage")


def test_theDocumentIsShippedInThePackage() -> None:
    """What is served is the package's file, as setup.py installs it."""
    shipped = files("morpheo.web").joinpath("openapi.json").read_bytes()
    assert json.loads(shipped) == document()


def test_theDocumentIsServedWithoutCredentials(service: Service) -> None:
    reply = service.request("GET", "/openapi.json", auth=None)
    assert reply.code == 200
    assert reply.json() == document()
    assert service.request("HEAD", "/openapi.json", auth=None).code == 200


def _appRoutes() -> set[str]:
    """C{METHOD /path} of every Klein route of L{StorageAPI} (HEAD included)."""
    routes = set()
    for rule in StorageAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {f"{method} {path}" for method in rule.methods or ()}
    return routes


def _documentedRoutes() -> set[str]:
    """C{METHOD /path} of every operation a route serves (see L{routedMethods})."""
    return {f"{method} {path}" for path in document()["paths"] for method in routedMethods([path])}


def test_everyRouteIsDocumentedAndNothingElse() -> None:
    """
    Both ways: a route added without its description fails here, and so
    does a description of a route that is gone (but for those described
    ahead of their code, L{AHEAD}).
    """
    app, documented = _appRoutes(), _documentedRoutes()
    assert app - documented == set()
    assert documented - app <= AHEAD


def test_everyPathHasItsPreflight() -> None:
    """
    CORS preflights are answered on every path, without credentials: an
    OPTIONS that is also a route's (tus discovery) names no credentials as
    one of its alternatives.
    """
    for path, item in document()["paths"].items():
        security = item["options"]["security"]
        assert security == [] or {} in security, path


def test_everyDataRouteNeedsCredentialsAndSaysSo() -> None:
    """The document's open routes are the service's: the others answer 401."""
    open_ = {"/", "/health", "/ready", "/openapi.json"}
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method == "options":
                continue
            if path in open_:
                assert operation["security"] == [], (method, path)
            else:
                assert "security" not in operation, (method, path)
                assert "401" in operation["responses"], (method, path)


@pytest.mark.parametrize("path", ["/", "/health", "/problem", "/data/{uuid}", "/algo/{uuid}/blob"])
def test_preflightsAndHeadsAreDescribed(service: Service, path: str) -> None:
    """Answers the harness checks as it goes: a preflight, a HEAD, a bare OPTIONS."""
    uuid = service.stored("algo")["uuid"] if "{uuid}" in path else ""
    path = path.replace("{uuid}", uuid)
    preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "GET"}
    assert service.request("OPTIONS", path, headers=preflight, auth=None).code == 204
    assert service.request("HEAD", path).code in (200, 404)
    assert service.request("OPTIONS", path).code == 405


def test_aChangeAndItsConditionsAreDescribed(service: Service) -> None:
    """A PATCH, a 412, a 304 and a 409, each checked against the document."""
    stored = service.stored("problem")
    path = f"/problem/{stored['uuid']}"
    etag = f'"{stored["sha256"]}"'
    assert service.request("GET", path, headers={"If-None-Match": etag}).code == 304
    body = form({"description": "changed"})
    changed = service.request("PATCH", path, body, {"Content-Type": FORM_TYPE, "If-Match": '"0"'})
    assert changed.code == 412
    blob = b"another"
    taken = service.stored("problem")["uuid"]
    body = form(fieldsFor("problem", blob, uuid=taken), blob)
    assert service.request("POST", "/problem", body, {"Content-Type": FORM_TYPE}).code == 409


# The checker itself


def test_anUndocumentedPathFailsNamingIt() -> None:
    with pytest.raises(Undocumented, match=r"POST /batches answered 201, .* no such path"):
        checkAnswer("POST", "/batches", 201, {}, b"")


def test_anUnknownPathMayOnlyGetTheJSON404() -> None:
    checkAnswer("GET", "/no/such/route/here", 404, JSON, ERROR)
    with pytest.raises(Undocumented):
        checkAnswer("GET", "/no/such/route/here", 200, JSON, b"{}")


def test_anUndocumentedStatusFailsNamingIt() -> None:
    with pytest.raises(Undocumented, match=r"GET /health answered 418"):
        checkAnswer("GET", "/health", 418, JSON, b'{"error": "teapot"}')


def test_aBodyUnlikeItsSchemaFails() -> None:
    checkAnswer("GET", "/health", 200, JSON, b'{"status": "ok"}')
    with pytest.raises(Undocumented, match=r"GET /health answered 200"):
        checkAnswer("GET", "/health", 200, JSON, b'{"status": "fine"}')
    with pytest.raises(Undocumented):
        checkAnswer("GET", f"/data/{newUUID()}", 404, JSON, b'{"message": "gone"}')


def test_aMissingRequiredHeaderFails() -> None:
    """A 401 says how to authenticate."""
    path = f"/data/{newUUID()}"
    checkAnswer("GET", path, 401, {**JSON, "www-authenticate": "Basic"}, b'{"error": "no"}')
    with pytest.raises(Undocumented, match="WWW-Authenticate"):
        checkAnswer("GET", path, 401, JSON, b'{"error": "no"}')


def test_anUndocumentedMethodMayOnlyGetA405NamingTheDocumentsMethods() -> None:
    path = f"/problem/{newUUID()}"
    allowed = {**JSON, "allow": "PATCH, HEAD, DELETE, GET"}
    checkAnswer("PUT", path, 405, allowed, ERROR)
    with pytest.raises(Undocumented, match=r"PUT /problem/.* answered 200"):
        checkAnswer("PUT", path, 200, JSON, b"{}")
    with pytest.raises(Undocumented, match="Allow: DELETE, GET, HEAD"):
        checkAnswer("PUT", path, 405, {**JSON, "allow": "HEAD, DELETE, GET"}, ERROR)


def test_theUploadsRefusalsAreDescribed(service: Service) -> None:
    """
    The resumable uploads' answers the protocols' own tests do not meet,
    each checked against the document: a preflight, discovery without
    credentials, no protocol (412), bytes of another media type (415),
    no such upload, and methods the paths do not take (405, or the
    unknown kind's 404 where the path fits C{/{kind}/{uuid}}).
    """
    tus = {"Tus-Resumable": "1.0.0"}
    missing = "/uploads/" + "A" * 22
    preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST"}
    assert service.request("OPTIONS", "/uploads", headers=preflight, auth=None).code == 204
    assert service.request("OPTIONS", "/uploads", auth=None).code == 401
    refused = service.request("POST", "/uploads", headers={"Upload-Length": "3"})
    assert (refused.code, refused.header("tus-version")) == (412, "1.0.0")
    assert service.request("HEAD", missing).code == 412
    data = "kind " + base64.b64encode(b"data").decode()
    wrongType = {**tus, "Upload-Length": "3", "Upload-Metadata": data, "Content-Type": "text/plain"}
    assert service.request("POST", "/uploads", b"abc", wrongType).code == 415
    wrongType = {**tus, "Upload-Offset": "0", "Content-Type": "text/plain"}
    assert service.request("PATCH", missing, b"abc", wrongType).code == 415
    assert service.request("HEAD", missing, headers=tus).code == 404
    assert service.request("DELETE", missing, headers=tus).code == 404
    assert service.request("PUT", "/uploads", headers=tus).code == 405
    assert service.request("PUT", missing, headers=tus).code == 405
    # /uploads/{uploadId} also fits /{kind}/{uuid}: its GET asks for a kind.
    assert service.request("GET", missing, headers=tus).code == 404
    assert service.request("OPTIONS", missing, headers=tus).code == 405


def test_uploadsWhereTheStoresKeepNoneAre501() -> None:
    service = Service(resumable=False)
    tus = {"Tus-Resumable": "1.0.0"}
    assert service.request("OPTIONS", "/uploads").code == 501
    assert service.request("POST", "/uploads", headers={**tus, "Upload-Length": "3"}).code == 501
    assert service.request("HEAD", "/uploads/" + "A" * 22, headers=tus).code == 501


def test_a405OnUploadsNamesItsDiscovery() -> None:
    """OPTIONS /uploads is a route (tus discovery): a 405 there names it."""
    checkAnswer("PUT", "/uploads", 405, {**JSON, "allow": "OPTIONS, POST"}, ERROR)
    with pytest.raises(Undocumented, match="Allow: POST"):
        checkAnswer("PUT", "/uploads", 405, {**JSON, "allow": "POST"}, ERROR)
    with pytest.raises(Undocumented, match="Allow: DELETE, HEAD, OPTIONS, PATCH"):
        allowed = {**JSON, "allow": "DELETE, HEAD, OPTIONS, PATCH"}
        checkAnswer("PUT", "/uploads/" + "A" * 22, 405, allowed, ERROR)
