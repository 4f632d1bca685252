"""
The API's OpenAPI document (C{morpheo/web/openapi.json}) as the tests hold
the service to it: every answer a test's HTTP client gets (the unit tier's
harness, L{tests.unit.harness.Service.request}, and the integration tier's
treq client) is checked against it with openapi-core, so that a route, a
status, a header or a body the document does not describe fails the test
that met it, naming the method, the path and the status.

What is checked of an answer: that its path is one of the document's (a
path no route has may only get the 404 error, or the 401 that data routes
answer before they look at the kind), that its method is one of that
path's (another may only get the 405 error, whose C{Allow} must name the
document's methods of that path, or, where the path also fits
C{/{kind}...} with that method, the 401 or the unknown kind's 404), then,
by openapi-core, its status, its content type, its body against the
schema and its required headers.
Requests are not checked: tests send bad ones on purpose, and what the
document holds them to is the answer they get.  Exact bytes written to a
connection (C{Service.raw}, C{Service.connect}: malformed HTTP, framing,
slow clients) are not checked either: they are not requests an HTTP client
makes, and their answers are not parsed by one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from attrs import define, field
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import MissingData
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from morpheo.web._routes import openAPIDocument

#: The methods of a path item.
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Undocumented(AssertionError):
    """An answer the OpenAPI document does not describe."""


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(openAPIDocument())
    return loaded


def _text(body: bytes | str, **parameters: str) -> str:
    return body.decode(parameters.get("charset", "utf-8")) if isinstance(body, bytes) else body


@cache
def _openAPI() -> OpenAPI:
    # openapi-core reads text/plain as text, but hands other text formats
    # over as bytes: OpenMetrics (what a Prometheus scraper asks /metrics for)
    # is text too.
    config = Config(extra_media_type_deserializers={"application/openmetrics-text": _text})
    return OpenAPI.from_dict(document(), config=config)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A component that C{node} refers to (C{#/components/...}), or C{node}."""
    while "$ref" in node:
        target: Any = document()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _segment(template: str, name: str) -> str:
    """
    What a path parameter matches: one of its values where the document
    lists them (a kind), else any segment.  So C{/uploads} is no C{/{kind}}.
    """
    for method, operation in document()["paths"][template].items():
        if method not in METHODS:
            continue
        for parameter in map(_resolve, operation.get("parameters", ())):
            if parameter["in"] == "path" and parameter["name"] == name:
                values = _resolve(parameter["schema"]).get("enum")
                if values:
                    return "(?:" + "|".join(map(re.escape, values)) + ")"
    return "[^/]+"


@cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    """Each path of the document, as a pattern of the paths it takes."""
    out = []
    for template in document()["paths"]:
        pattern = "".join(
            _segment(template, part[1:-1]) if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", template)
        )
        out.append((re.compile(pattern), template))
    return out


def documentedMethods(templates: Iterable[str]) -> set[str]:
    """The methods (upper case) the document gives these paths, together."""
    paths = document()["paths"]
    return {m.upper() for t in templates for m in paths[t] if m in METHODS}


def routedMethods(templates: Iterable[str]) -> set[str]:
    """
    The methods of these paths that routes serve, as a 405's C{Allow} names
    them: an OPTIONS only where it is more than the CORS preflight (tus
    discovery, which takes credentials).
    """
    paths = document()["paths"]
    methods = documentedMethods(templates)
    if not any({"basic": []} in paths[t].get("options", {}).get("security", []) for t in templates):
        methods.discard("OPTIONS")
    return methods


def _kindShaped(path: str, method: str) -> bool:
    """
    Whether C{path} also fits C{/{kind}...} with a method that has: then
    the data route answers first, asking for credentials (401) and for a
    known kind (404), as for any unknown kind (C{POST /health}).
    """
    for template in document()["paths"]:
        if template.startswith("/{kind}") and method.lower() in document()["paths"][template]:
            shape = re.sub(r"\{[^}]+\}", "[^/]+", template)
            if re.fullmatch(shape, path):
                return True
    return False


def _isJSON(contentType: str) -> bool:
    return contentType.split(";")[0].strip().lower() == "application/json"


def _isError(contentType: str, body: bytes) -> bool:
    if not _isJSON(contentType):
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(answer, dict) and set(answer) == {"error"} and isinstance(answer["error"], str)
    )


def checkAnswer(method: str, url: str, code: int, headers: Mapping[str, str], body: bytes) -> None:
    """
    Raise L{Undocumented} unless the document describes this answer
    (C{headers} by lower-case name, several values joined by commas).
    """
    target = urlsplit(url)
    path = unquote(target.path) or "/"
    said = f"{method} {path} answered {code}"
    contentType = headers.get("content-type", "")
    error = _isError(contentType, body) or (method.upper() == "HEAD" and _isJSON(contentType))
    matched = [template for pattern, template in _templates() if pattern.fullmatch(path)]
    if not matched:
        # Not a route, or one with an unknown kind: credentials are asked
        # for before the kind is looked at.
        if code == 404 and error:
            return
        if code == 401 and "www-authenticate" in headers and error:
            return
        raise Undocumented(f"{said}, and the OpenAPI document has no such path")
    methods = documentedMethods(matched)
    if method.upper() not in methods:
        if code == 405 and error:
            allowed = {m.strip() for m in headers.get("allow", "").split(",") if m.strip()}
            if allowed != routedMethods(matched):
                raise Undocumented(
                    f"{said} with Allow: {', '.join(sorted(allowed))}, but the OpenAPI document"
                    f" gives {' and '.join(matched)} the methods {', '.join(sorted(methods))}"
                )
            return
        if code in (401, 404) and error and _kindShaped(path, method):
            return
        raise Undocumented(
            f"{said}, and the OpenAPI document has no {method.upper()} for {' or '.join(matched)}"
        )
    request = MockRequest(
        f"{target.scheme or 'http'}://{target.netloc or 'storage.test'}",
        method.lower(),
        path,
        args={k: v[0] for k, v in parse_qs(target.query, keep_blank_values=True).items()},
    )
    response = MockResponse(body, code, dict(headers), contentType)
    problems = []
    for problem in _openAPI().iter_response_errors(request, response):
        if isinstance(problem, MissingData) and not body and not _isJSON(contentType):
            continue  # an empty blob: openapi-core takes no bytes for no body
        reasons = "; ".join(str(x) for x in getattr(problem, "schema_errors", ()) or ())
        problems.append(f"{problem}" + (f" ({reasons})" if reasons else ""))
    if problems:
        raise Undocumented(
            f"{said}, which the OpenAPI document does not describe: {'; '.join(problems)};"
            f" headers {dict(headers)}, body {body[:300]!r}"
        )


def flatHeaders(headers: Headers) -> dict[str, str]:
    """Headers by lower-case name, several values joined by commas."""
    return {
        name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
        for name, values in headers.getAllRawHeaders()
    }


#: The most of a body kept for the check (JSON answers are small; of a
#: blob, only whether it is empty matters).
KEPT = 1024 * 1024


class _Tee(Protocol):
    """Hands a body on to the test's protocol, keeping its start for the check."""

    def __init__(self, inner: Protocol, done: Any) -> None:
        self._inner = inner
        self._done = done
        self._kept: list[bytes] = []
        self._size = 0

    def makeConnection(self, transport: Any) -> None:
        self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._size < KEPT:
            self._kept.append(data[: KEPT - self._size])
            self._size += len(self._kept[-1])
        self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is not None and reason.check(ResponseDone) and self._size < KEPT:
            self._done(b"".join(self._kept))
        self._inner.connectionLost(reason)  # type: ignore[arg-type]


@define
class _CheckedResponse:
    """A response whose body, once read whole, is checked."""

    _response: IResponse
    _check: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def deliverBody(self, protocol: Protocol) -> None:
        self._response.deliverBody(_Tee(protocol, self._check))


@implementer(IAgent)
@define
class CheckingAgent:
    """
    An agent whose answers from this service (C{Server: TwistedWeb}: not
    those of the stores a redirect leads to) are checked against the
    document once their body has been read whole; what does not fit is
    kept in C{problems}, for the test's end to report.
    """

    _agent: IAgent
    problems: list[str] = field(factory=list)

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        d: Deferred[IResponse] = self._agent.request(method, uri, headers, bodyProducer)
        return d.addCallback(self._wrap, method.decode("ascii"), uri.decode("utf-8"))

    def _wrap(self, response: IResponse, method: str, uri: str) -> IResponse:
        server = (response.headers.getRawHeaders(b"server") or [b""])[0]
        if not server.startswith(b"TwistedWeb"):
            return response
        headers = flatHeaders(response.headers)
        if isinstance(response.length, int):
            headers.setdefault("content-length", str(response.length))

        def check(body: bytes) -> None:
            try:
                checkAnswer(method, uri, response.code, headers, body)
            except Undocumented as e:
                self.problems.append(str(e))

        return _CheckedResponse(response, check)  # type: ignore[return-value]


__all__ = [
    "CheckingAgent",
    "Undocumented",
    "checkAnswer",
    "document",
    "documentedMethods",
    "routedMethods",
]
