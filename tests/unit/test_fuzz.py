"""
Generated bad (and good) requests against the real web layer in memory:
methods, paths, query strings, headers, multipart bodies (boundaries, field
orders, truncations, duplicates, encodings) and chunked framing, well over a
thousand requests a run.  Whatever comes, the service answers: never a 5xx,
never a connection closed without an answer, every error a JSON body; and
nothing is left behind, no claim and no blob that no object points to.
The answers to the sensible requests (well-formed HTTP, as a client means
it) are held to the OpenAPI document too; those to generated bad ones are
not, as the document cannot say which of them HTTP's own parser refuses.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from http.client import HTTPResponse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from tests.apidoc import checkAnswer

from .harness import BOUNDARY, FORM_TYPE, Service, basic, fieldsFor, form, newUUID, request

#: Requests sent per run, at the least.
AT_LEAST = 1000
PER_EXAMPLE = 5
EXAMPLES = AT_LEAST // PER_EXAMPLE + 50

KINDS = ["algo", "data", "model", "prediction", "problem"]

# Pieces of requests

_digits = st.integers(min_value=0, max_value=10**25).map(str)
_weird = st.sampled_from(
    ["", "²", "%B2", "%C2%B2.1", "%00", "\x00", "-1", "1e3", "0x10", "9" * 5000, " 7", "%ZZ", "é"]
)
_text = st.text(max_size=20)
_value = st.one_of(_digits, _weird, _text)


@st.composite
def paths(draw: st.DrawFn, known: list[tuple[str, str]]) -> str:
    kind = draw(st.sampled_from([*KINDS, "nothing", "ALGO", "", "%61lgo"]))
    uuid = draw(
        st.one_of(
            st.sampled_from([u for _, u in known] or [newUUID()]),
            st.uuids().map(str),
            _weird,
            st.text(alphabet="abcdef0123456789-%./", max_size=40),
        )
    )
    shape = draw(st.sampled_from(["/", "/health", "/ready", "k", "k/u", "k/u/blob", "raw"]))
    if shape.startswith("/"):
        path = shape
    elif shape == "raw":
        path = "/" + draw(st.text(max_size=30)).replace(" ", "%20")
    else:
        path = "/" + shape.replace("k", kind).replace("u", uuid)
    keys = st.sampled_from(["limit", "page", "cursor", "name", "algo", "size", "uuid", "x", ""])
    query = draw(st.lists(st.tuples(keys, _value), max_size=3))
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query)
    return path


_contentTypes = st.sampled_from(
    [
        f"multipart/form-data; boundary={BOUNDARY}",
        "multipart/form-data",
        'multipart/form-data; boundary=""',
        "multipart/form-data; boundary=" + "b" * 200,
        f'multipart/form-data; boundary="{BOUNDARY}"; charset=utf-8',
        "application/octet-stream",
        "text/plain",
        "application/json",
        "",
    ]
)


@st.composite
def multipart(draw: st.DrawFn, known: list[tuple[str, str]]) -> bytes:
    """A form: fields in any order, maybe repeated, the blob anywhere, maybe cut."""
    names = st.sampled_from(
        ["uuid", "name", "description", "algo", "size", "blob", "problem", "", "x", 'a"b']
    )
    values = st.one_of(
        _value,
        st.sampled_from([u for _, u in known] or [newUUID()]),
        st.uuids().map(str),
    )
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    blob = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        at = draw(st.integers(min_value=0, max_value=len(fields)))
        fields.insert(at, ("size", str(len(blob))))
    parts = []
    boundary = draw(st.sampled_from([BOUNDARY, BOUNDARY, "other", ""]))
    for name, value in fields:
        if name == "blob":
            filename = draw(st.sampled_from(["b.bin", "", "\x00.bin", "é.bin", 'q"uote']))
            ctype = draw(st.sampled_from(["application/octet-stream", "", "text/\x01"]))
            head = (
                f'Content-Disposition: form-data; name="blob"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n"
            )
            parts.append(f"--{boundary}\r\n{head}\r\n".encode() + blob + b"\r\n")
        else:
            encoded = value.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1"])), "replace")
            head = f'Content-Disposition: form-data; name="{name}"\r\n'
            parts.append(f"--{boundary}\r\n{head}\r\n".encode() + encoded + b"\r\n")
    body = b"".join(parts)
    if draw(st.booleans()):
        body += f"--{boundary}--\r\n".encode()
    if body and draw(st.integers(min_value=0, max_value=4)) == 0:
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    return body


def _chunked(body: bytes, pieces: int) -> bytes:
    step = max(1, len(body) // max(1, pieces))
    out = b"".join(
        b"%x\r\n" % len(body[i : i + step]) + body[i : i + step] + b"\r\n"
        for i in range(0, len(body), step)
    )
    return out + b"0\r\n\r\n"


@st.composite
def framed(draw: st.DrawFn, body: bytes) -> tuple[dict[str, str], bytes]:
    """Headers that frame C{body} (or mis-frame it), and the bytes sent."""
    how = draw(
        st.sampled_from(
            ["none", "length", "length", "short", "long", "chunked", "badchunk", "te+cl", "2cl",
             "te-identity", "te-list"]
        )
    )  # fmt: skip
    n = len(body)
    if how == "none":
        return {}, b""
    if how == "length":
        return {"Content-Length": str(n)}, body
    if how == "short":
        return {"Content-Length": str(max(0, n - 3))}, body
    if how == "long":
        return {"Content-Length": str(n + 5)}, body
    if how == "chunked":
        return {"Transfer-Encoding": "chunked"}, _chunked(body, draw(st.integers(1, 4)))
    if how == "badchunk":
        return {"Transfer-Encoding": "chunked"}, b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    if how == "te+cl":
        return {"Transfer-Encoding": "chunked", "Content-Length": str(n)}, _chunked(body, 2)
    if how == "2cl":
        return {"Content-Length": f"{n}, {n + 1}"}, body
    if how == "te-identity":
        return {"Transfer-Encoding": "identity"}, body
    return {"Transfer-Encoding": "identity, chunked"}, _chunked(body, 1)


@st.composite
def requests(draw: st.DrawFn, known: list[tuple[str, str]]) -> tuple[str, bytes]:
    """A request as the wire carries it, and its method."""
    method = draw(
        st.sampled_from(["GET", "GET", "HEAD", "POST", "POST", "PATCH", "DELETE", "PUT",
                         "OPTIONS", "TRACE", "BREW", "get"])
    )  # fmt: skip
    path = draw(paths(known))
    headers: dict[str, str] = {"Host": "storage.test"}
    auth = draw(st.sampled_from(["ok", "ok", "ok", "wrong", "junk", "none"]))
    if auth == "ok":
        headers["Authorization"] = basic()
    elif auth == "wrong":
        headers["Authorization"] = basic(password="nope")
    elif auth == "junk":
        headers["Authorization"] = draw(st.sampled_from(["Basic !!!", "Basic", "Bearer x", "é"]))
    if method in ("POST", "PATCH", "PUT") or draw(st.booleans()):
        ctype = draw(_contentTypes)
        if ctype:
            headers["Content-Type"] = ctype
        body = draw(st.one_of(multipart(known), st.binary(max_size=200)))
    else:
        body = b""
    framing, sent = draw(framed(body))
    headers.update(framing)
    for name, values in [
        (
            "Range",
            ["bytes=0-0", "bytes=-5", "bytes=" + ",".join(["0-"] * 50), "bytes=x", "items=1"],
        ),
        ("If-None-Match", ['"x"', "*", "W/"]),
        ("If-Match", ['"x"', "*"]),
        ("Expect", ["100-continue", "nonsense"]),
        ("Repr-Digest", ["sha-256=:AAAA:", "sha-256=x", "md5=:x:"]),
        ("Content-MD5", ["AAAA", "!"]),
        ("Origin", ["http://elsewhere", "null"]),
    ]:
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            headers[name] = draw(st.sampled_from(values))
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        headers["X-" + draw(st.text(alphabet="abcdefgh-", min_size=1, max_size=10))] = draw(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30)
        )
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    version = draw(st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTX"]))
    head = f"{method} {path} {version}\r\n{lines}\r\n"
    return method, head.encode("utf-8", "surrogateescape") + sent


@st.composite
def sensible(draw: st.DrawFn, known: list[tuple[str, str]]) -> tuple[str, bytes]:
    """
    A request as a client means it: an upload of a kind with its fields
    (some cut, repeated or wrong), a read of an object that may be there,
    a change or a deletion; so that what succeeds is checked too.
    """
    kind = draw(st.sampled_from(KINDS))
    uuids = dict(known)
    blob = draw(st.binary(max_size=200))
    action = draw(st.sampled_from(["upload", "upload", "read", "blob", "delete", "patch", "list"]))
    if action in ("upload", "patch"):
        fields = fieldsFor(kind if action == "upload" else "problem", blob)
        if kind == "model" and action == "upload":
            query = f"?algo={uuids['algo']}" if draw(st.booleans()) else ""
            head = {"Content-Type": "application/octet-stream"}
            if draw(st.booleans()):
                sent = _chunked(blob, draw(st.integers(1, 3)))
                head["Transfer-Encoding"] = "chunked"
                return "POST", request("POST", f"/model{query}", head, sent)
            return "POST", request("POST", f"/model{query}", head, blob)
        if draw(st.booleans()):
            fields["uuid"] = draw(st.sampled_from([newUUID(), *uuids.values()]))
        body = form(fields, blob)
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
        method, path = (
            ("POST", f"/{kind}")
            if action == "upload"
            else ("PATCH", f"/problem/{uuids['problem']}")
        )
        return method, request(method, path, {"Content-Type": FORM_TYPE}, body)
    path = {
        "read": f"/{kind}/{uuids[kind]}",
        "blob": f"/{kind}/{uuids[kind]}/blob",
        "delete": f"/{kind}/{uuids[kind]}",
        "list": f"/{kind}?limit={draw(st.integers(0, 5))}",
    }[action]
    method = "DELETE" if action == "delete" else draw(st.sampled_from(["GET", "HEAD"]))
    return method, request(method, path)


# Sending and reading


class _Socket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def exchange(service: Service, data: bytes) -> tuple[bytes, bool]:
    """Send C{data} on a new connection; what came back, and whether the
    server closed the connection."""
    protocol = service.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 31337))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    for _ in range(50):
        service.reactor.advance(0)
    answer, closed = transport.value(), transport.disconnecting
    if not closed:
        # The client gives up (the server may be waiting for more body).
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionDone()))
        for _ in range(50):
            service.reactor.advance(0)
    return answer, closed


def firstResponse(answer: bytes, method: str) -> tuple[int, dict[str, str], bytes]:
    response = HTTPResponse(_Socket(answer), method=method.upper())  # type: ignore[arg-type]
    response.begin()
    body = response.read() if method.upper() != "HEAD" else b""
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def assertNothingLeft(service: Service) -> None:
    """No claim left, and no blob that no object points to."""
    rows = service.rows()
    assert all(state == "ready" for _, _, state in rows), rows
    keys = set()
    for kind, uuid, _ in rows:
        stored = service.run(service.objects.get(kind, uuid))
        keys.add(stored.blob_key)
    assert set(service.blobKeys()) == keys


#: The objects every example starts with, for its requests to find.
KNOWN = [(kind, newUUID()) for kind in KINDS]


def seeded() -> Service:
    """A service with the objects of L{KNOWN}."""
    service = Service()
    uuids = dict(KNOWN)
    assert service.upload("algo", b"#!/bin/sh\n", uuid=uuids["algo"], name="a").code == 201
    for kind in ("data", "prediction", "problem"):
        assert service.upload(kind, uuid=uuids[kind]).code == 201
    model = service.upload("model", b"weights", algo=uuids["algo"], uuid=uuids["model"])
    assert model.code == 201
    return service


def test_whateverComesTheServiceAnswersWithoutAFaultAndLeavesNothing() -> None:
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(
        st.lists(
            st.one_of(
                requests(KNOWN).map(lambda r: (*r, False)),
                sensible(KNOWN).map(lambda r: (*r, True)),
            ),
            min_size=PER_EXAMPLE,
            max_size=PER_EXAMPLE,
        )
    )
    def run(batch: list[tuple[str, bytes, bool]]) -> None:
        service = seeded()
        for method, data, meant in batch:
            answer, closed = exchange(service, data)
            if not answer:
                # Waiting for the rest of a body the client never sent is
                # fine; closing without a word is not.
                assert not closed, data[:300]
                statuses[0] += 1
                continue
            code, headers, body = firstResponse(answer, method)
            statuses[code] += 1
            assert code < 500, (data[:300], answer[:300])
            if code >= 400 and method.upper() != "HEAD":
                assert headers.get("content-type") == "application/json", (data[:300], answer[:300])
                document: Any = json.loads(body)
                assert isinstance(document.get("error"), str) and document["error"]
            if meant:
                # Well-formed HTTP: its answer is one the OpenAPI document describes.
                target = data.split(b" ", 2)[1].decode("utf-8")
                checkAnswer(method, target, code, headers, body)
        assertNothingLeft(service)

    run()
    total = sum(statuses.values())
    print(f"{total} requests; statuses: {dict(sorted(statuses.items()))}")
    assert total >= AT_LEAST
