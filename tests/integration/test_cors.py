"""
CORS through real servers: any origin by default (C{*}), the origins of
C{--cors-origin} otherwise (others get no CORS headers); preflight
C{OPTIONS} answered without credentials; the headers on 401s and errors too,
where a browser needs them to read the error.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import treq

from tests.integration.helpers import FORM_HEADERS, form, header, jsonOf, newUUID, uploadFields
from tests.integration.servers import Server, startServer

APP = "https://app.example.org"
OTHER = "https://other.example.org"
TIMEOUT = 30


@pytest.fixture
def anyOrigin(server: Server) -> Server:
    """Any origin is the default: the session's server."""
    return server


@pytest.fixture(scope="module")
def someOrigins(tmp_path_factory):
    s = startServer(
        str(tmp_path_factory.mktemp("cors-some")),
        "--cors-origin", APP, "--cors-origin", OTHER + "/",
    )  # fmt: skip
    yield s
    s.stop()


async def preflight(http, url: str, origin: str, method: str = "POST", headers: str = ""):
    """A browser's preflight: no credentials, ever."""
    ask = {"Origin": [origin], "Access-Control-Request-Method": [method]}
    if headers:
        ask["Access-Control-Request-Headers"] = [headers]
    return await http.request("OPTIONS", url, headers=ask, timeout=TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_anyOriginByDefault(http, anyOrigin) -> None:
    server = anyOrigin
    r = await http.get(f"{server.url}/problem", auth=server.auth, headers={"Origin": [APP]})
    assert r.code == 200
    assert header(r, "Access-Control-Allow-Origin") == "*"
    exposed = header(r, "Access-Control-Expose-Headers") or ""
    for name in ("ETag", "Content-Range", "Repr-Digest", "WWW-Authenticate"):
        assert name in exposed
    # Any origin: the answer does not depend on it.
    assert header(r, "Vary") is None
    # Without Origin (not a browser's cross-origin call): no CORS headers.
    r = await http.get(f"{server.url}/problem", auth=server.auth, timeout=TIMEOUT)
    assert r.code == 200
    assert header(r, "Access-Control-Allow-Origin") is None


@pytest_twisted.ensureDeferred
async def test_preflightWithoutCredentials(http, anyOrigin) -> None:
    """
    Every route a browser may call, with the headers it needs (credentials,
    conditions, ranges, digests), is allowed by a preflight that carries no
    credentials; nothing is run.
    """
    server = anyOrigin
    asked = "authorization, content-type, if-match, range, repr-digest"
    for path, method in [
        ("/problem", "POST"),
        (f"/problem/{newUUID()}", "PATCH"),
        (f"/data/{newUUID()}", "DELETE"),
        (f"/model/{newUUID()}/blob", "GET"),
    ]:
        r = await preflight(http, server.url + path, APP, method, asked)
        assert r.code == 204, path
        assert await treq.content(r) == b""
        assert header(r, "Access-Control-Allow-Origin") == "*"
        methods = [m.strip() for m in (header(r, "Access-Control-Allow-Methods") or "").split(",")]
        assert method in methods, (method, methods)
        allowed = (header(r, "Access-Control-Allow-Headers") or "").lower()
        for name in asked.split(", "):
            assert name in allowed, name
        assert header(r, "Access-Control-Max-Age")
        assert header(r, "WWW-Authenticate") is None


@pytest_twisted.ensureDeferred
async def test_headersOn401AndErrors(http, anyOrigin) -> None:
    """A browser reads an error only if it carries the CORS headers."""
    server = anyOrigin
    origin = {"Origin": [APP]}
    r = await http.get(f"{server.url}/problem", headers=origin, timeout=TIMEOUT)
    assert r.code == 401
    assert header(r, "Access-Control-Allow-Origin") == "*"
    assert "WWW-Authenticate" in (header(r, "Access-Control-Expose-Headers") or "")
    r = await http.get(
        f"{server.url}/problem/{newUUID()}", auth=server.auth, headers=origin, timeout=TIMEOUT
    )
    assert r.code == 404
    assert header(r, "Access-Control-Allow-Origin") == "*"
    r = await http.get(f"{server.url}/nowhere", auth=server.auth, headers=origin, timeout=TIMEOUT)
    assert r.code == 404
    assert header(r, "Access-Control-Allow-Origin") == "*"
    r = await http.post(
        f"{server.url}/data",
        data=form(("size", "1"), ("blob", b"xx")),
        headers={**FORM_HEADERS, b"Origin": [APP.encode()]},
        auth=server.auth,
        timeout=TIMEOUT,
    )
    assert r.code == 400
    assert header(r, "Access-Control-Allow-Origin") == "*"
    assert "error" in await jsonOf(r)
    r = await http.post(
        f"{server.url}/data",
        data=form(*uploadFields("data", b"cross-origin")),
        headers={**FORM_HEADERS, b"Origin": [APP.encode()]},
        auth=server.auth,
        timeout=TIMEOUT,
    )
    assert r.code == 201
    assert header(r, "Access-Control-Allow-Origin") == "*"
    assert "Repr-Digest" in (header(r, "Access-Control-Expose-Headers") or "")


@pytest_twisted.ensureDeferred
async def test_configuredOrigins(http, someOrigins) -> None:
    """
    The origins given are echoed back (with C{Vary: Origin}, the answer
    depends on it), a trailing slash in the option or not; another origin
    gets no CORS header at all, on requests and preflights alike.
    """
    server = someOrigins
    for origin in (APP, OTHER):
        r = await http.get(
            f"{server.url}/algo", auth=server.auth, headers={"Origin": [origin]}, timeout=TIMEOUT
        )
        assert r.code == 200
        assert header(r, "Access-Control-Allow-Origin") == origin
        assert header(r, "Vary") == "Origin"
        r = await preflight(http, f"{server.url}/algo", origin)
        assert r.code == 204
        assert header(r, "Access-Control-Allow-Origin") == origin
        assert "POST" in (header(r, "Access-Control-Allow-Methods") or "")
        assert header(r, "Vary") == "Origin"
    evil = "https://evil.example.com"
    r = await http.get(
        f"{server.url}/algo", auth=server.auth, headers={"Origin": [evil]}, timeout=TIMEOUT
    )
    assert r.code == 200
    assert header(r, "Access-Control-Allow-Origin") is None
    assert header(r, "Access-Control-Expose-Headers") is None
    assert header(r, "Vary") == "Origin"
    r = await preflight(http, f"{server.url}/algo", evil)
    assert r.code == 204
    for name in ("Origin", "Methods", "Headers"):
        assert header(r, f"Access-Control-Allow-{name}") is None
    r = await http.get(f"{server.url}/algo", headers={"Origin": [APP]}, timeout=TIMEOUT)
    assert r.code == 401
    assert header(r, "Access-Control-Allow-Origin") == APP


@pytest_twisted.ensureDeferred
async def test_optionsWithoutPreflightIsNotAPreflight(http, anyOrigin) -> None:
    """An OPTIONS that is no preflight goes to the routes, which do not serve it."""
    server = anyOrigin
    r = await http.request(
        "OPTIONS", f"{server.url}/problem", headers={"Origin": [APP]}, timeout=TIMEOUT
    )
    assert r.code in (401, 405)
    assert header(r, "Access-Control-Allow-Methods") is None
    assert header(r, "Access-Control-Allow-Origin") == "*"
