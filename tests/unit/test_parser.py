"""
What twisted.web's HTTP parser decides, as the wire shows it: every request
it cannot take gets a 4xx with a JSON error that says what to fix, and the
connection is closed where it must be (RFC 9112 section 6.3: a body whose
framing is ambiguous is never read).  Nothing is logged as an error and
nothing is stored.  Also the few answers twisted.web itself renders (a
request for C{*}, a failing handler, a path that is not UTF-8).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from morpheo.web._streaming import LINGER_SECONDS

from .harness import FORM_TYPE, Service, basic, request, responseHeaders, status

HEAD = "Host: storage.test\r\nAuthorization: " + basic() + "\r\n"


def wire(first: str, *headers: str, body: bytes = b"") -> bytes:
    """A request line, the credentials, C{headers}, then C{body}."""
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"{first}\r\n{HEAD}{lines}\r\n".encode("utf-8", "surrogateescape") + body


@pytest.fixture
def errors() -> Iterator[list[dict[str, Any]]]:
    """The events logged at error level or above (an Unhandled Error among them)."""
    found: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.error or event.get("isError"):
            found.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield found
    gc.collect()  # a Deferred's unhandled failure is logged when it is collected
    globalLogPublisher.removeObserver(observer)


def refusal(answer: bytes) -> tuple[int, str, dict[str, str]]:
    """The status, the error sentence and the headers of a JSON refusal."""
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = responseHeaders(answer)
    assert headers["content-type"] == "application/json", answer[:300]
    assert int(headers["content-length"]) == len(body), answer[:300]
    document = json.loads(body)
    assert set(document) == {"error"}
    return status(answer), document["error"], headers


BIG = "x" * 1000

PARSER_ERRORS = {
    "not a request line": (b"NOT HTTP AT ALL\r\n\r\n", 400, "the request line must be METHOD"),
    "HTTP/0.9": (b"GET /\r\n\r\n", 400, "the request line must be METHOD"),
    "two spaces": (wire("GET  / HTTP/1.1"), 400, "three parts separated by single spaces"),
    "bad method": (wire("G{T / HTTP/1.1"), 400, "the method 'G{T' is not a token"),
    "HTTP/2": (wire("GET / HTTP/2.0"), 400, "this service speaks HTTP/1.1, not 'HTTP/2.0'"),
    "raw byte in the target": (
        wire("GET /data/\udcff HTTP/1.1"),
        400,
        "the request target must be printable ASCII",
    ),
    "request line too long": (wire(f"GET /{'a' * 17000} HTTP/1.1"), 414, "longer than 16384"),
    "request line too long, unfinished": (b"GET /" + b"a" * 17000, 414, "longer than 16384"),
    "header without colon": (wire("GET / HTTP/1.1", "Broken"), 400, "'Broken' is not a name"),
    "header name with a space": (wire("GET / HTTP/1.1", "Bad Name: x"), 400, "is not a name"),
    "NUL in a header": (wire("GET / HTTP/1.1", "X-A: a\x00b"), 400, "X-A holds a NUL, CR or LF"),
    "too many headers": (
        wire("GET / HTTP/1.1", *(f"X-{i}: y" for i in range(501))),
        431,
        "the request has more than 500 header lines",
    ),
    "header block too large": (
        wire("GET / HTTP/1.1", *(f"X-{i}: {BIG}" for i in range(20))),
        431,
        "the request's header block is larger than 16384 bytes",
    ),
    "one header line too long": (
        wire("GET / HTTP/1.1", f"X-Big: {'y' * 17000}"),
        431,
        "the request's header block is larger than 16384 bytes",
    ),
    "Content-Length not a number": (
        wire("POST /data HTTP/1.1", "Content-Length: many"),
        400,
        "Content-Length must be a number of bytes, not 'many'",
    ),
    "Content-Length signed": (
        wire("POST /data HTTP/1.1", "Content-Length: +5"),
        400,
        "Content-Length must be a number of bytes, not '+5'",
    ),
    "Content-Length list": (
        wire("POST /data HTTP/1.1", "Content-Length: 5, 5"),
        400,
        "Content-Length must be a number of bytes, not '5, 5'",
    ),
    "Content-Length of other digits": (
        wire("POST /data HTTP/1.1", "Content-Length: \u0663"),
        400,
        "Content-Length must be a number of bytes",
    ),
    "Content-Length of 4301 digits": (
        wire("POST /data HTTP/1.1", "Content-Length: " + "9" * 4301),
        413,
        "a Content-Length of 4301 digits is more than this service takes",
    ),
    "Content-Length beyond a bigint": (
        wire("POST /data HTTP/1.1", "Content-Length: 9223372036854775808"),
        413,
        "a Content-Length of 19 digits is more than this service takes",
    ),
    "two Content-Length": (
        wire("POST /data HTTP/1.1", "Content-Length: 5", "Content-Length: 5", body=b"hello"),
        400,
        "the request has several Content-Length headers: send one",
    ),
    "two different Content-Length": (
        wire("POST /data HTTP/1.1", "Content-Length: 5", "Content-Length: 6", body=b"hello!"),
        400,
        "the request has several Content-Length headers: send one",
    ),
    "Transfer-Encoding then Content-Length": (
        wire(
            "POST /data HTTP/1.1",
            "Transfer-Encoding: chunked",
            "Content-Length: 5",
            body=b"0\r\n\r\n",
        ),
        400,
        "the request has both Transfer-Encoding and Content-Length: send one of them",
    ),
    "Content-Length then Transfer-Encoding": (
        wire(
            "POST /data HTTP/1.1",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
        "the request has both Transfer-Encoding and Content-Length: send one of them",
    ),
    "chunked then identity": (
        wire(
            "POST /data HTTP/1.1",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: identity",
            body=b"0\r\n\r\n",
        ),
        400,
        "Transfer-Encoding must be chunked, alone; not 'chunked, identity'",
    ),
    "identity, chunked": (
        wire("POST /data HTTP/1.1", "Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n"),
        400,
        "Transfer-Encoding must be chunked, alone; not 'identity, chunked'",
    ),
    "identity": (
        wire("POST /data HTTP/1.1", "Transfer-Encoding: identity"),
        400,
        "Transfer-Encoding must be chunked, alone; not 'identity'",
    ),
    "gzip, chunked": (
        wire("POST /data HTTP/1.1", "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        400,
        "Transfer-Encoding must be chunked, alone; not 'gzip, chunked'",
    ),
    "chunked twice": (
        wire("POST /data HTTP/1.1", "Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"),
        400,
        "Transfer-Encoding must be chunked, alone; not 'chunked, chunked'",
    ),
    "chunked over HTTP/1.0": (
        wire("POST /data HTTP/1.0", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        "a chunked body needs HTTP/1.1",
    ),
}


@pytest.mark.parametrize(("data", "code", "words"), PARSER_ERRORS.values(), ids=PARSER_ERRORS)
def test_whatTheParserRefusesIsAJSONErrorAndAClose(
    service: Service, errors: list[dict[str, Any]], data: bytes, code: int, words: str
) -> None:
    answer, closed = service.rawExchange(data)
    got, message, headers = refusal(answer)
    assert got == code
    assert words in message
    assert headers["connection"] == "close"
    assert closed
    assert answer.count(b"HTTP/1.1 ") == 1
    assert errors == []
    service.assertNothingLeft()


def test_aRefusalLingersForTheRestOfTheBodyThenCloses(service: Service) -> None:
    """The client may still be sending: closing at once could reset the answer away."""
    connection = service.connect()
    answer = connection.send(
        wire("POST /data HTTP/1.1", "Content-Length: 9000", "Transfer-Encoding: chunked")
    )
    assert refusal(answer)[0] == 400
    assert connection.send(b"x" * 5000) == b""
    assert not connection.closed
    service.advance(LINGER_SECONDS)
    assert connection.closed


def test_aRefusedHEADHasTheHeadersButNoBody(service: Service) -> None:
    answer = service.raw(wire("HEAD /data HTTP/1.1", "Transfer-Encoding: gzip"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status(answer) == 400 and body == b""
    headers = responseHeaders(answer)
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) > 0


def test_aChunkedTransferEncodingInAnyCaseIsTaken(service: Service) -> None:
    algo = service.algo()
    answer = service.raw(
        wire(
            f"POST /model?algo={algo} HTTP/1.1",
            "Transfer-Encoding: Chunked",
            body=b"3\r\nabc\r\n0\r\n\r\n",
        )
    )
    assert status(answer) == 201


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n", b"5\r\nhello!!\r\n", b"5;\x01=x\r\nhello\r\n", b"f" * 2000],
    ids=["not hexadecimal", "no CRLF after the chunk", "bad extension", "endless size line"],
)
def test_aMalformedChunkedModelIs400AndLeavesNothing(
    service: Service, errors: list[dict[str, Any]], chunks: bytes
) -> None:
    algo = service.algo()
    before = service.snapshot()
    connection = service.connect()
    answer = connection.send(
        wire(
            f"POST /model?algo={algo} HTTP/1.1",
            "Transfer-Encoding: chunked",
            body=b"4\r\nfine\r\n" + chunks,
        )
    )
    code, message, headers = refusal(answer)
    assert code == 400
    assert message.startswith("the chunked request body is malformed: ")
    assert headers["connection"] == "close"
    service.advance(LINGER_SECONDS)
    assert connection.closed
    service.assertNothingLeft(before)
    assert errors == []


def test_aMalformedChunkedFormIs400(service: Service) -> None:
    connection = service.connect()
    answer = connection.send(
        wire(
            "POST /data HTTP/1.1",
            f"Content-Type: {FORM_TYPE}",
            "Transfer-Encoding: chunked",
            body=b"nope\r\n",
        )
    )
    assert refusal(answer)[:2] == (
        400,
        "the chunked request body is malformed: Chunk-size must be an integer.",
    )
    service.assertNothingLeft()


def test_aMalformedChunkAfterAnEarlyAnswerCloses(service: Service) -> None:
    """The answer went out (a 404, from the headers): the broken rest only closes."""
    connection = service.connect()
    head = wire("POST /floppy HTTP/1.1", "Transfer-Encoding: chunked")
    answer = connection.send(head)
    assert status(answer) == 404
    assert connection.send(b"zz\r\n") == b""
    service.advance(LINGER_SECONDS)
    assert connection.closed


def test_aRequestForStarIs405JSONButOPTIONSIsFine(service: Service) -> None:
    code, message, headers = refusal(service.raw(b"GET * HTTP/1.1\r\nHost: s\r\n\r\n"))
    assert (code, headers["allow"]) == (405, "OPTIONS")
    assert message == "only OPTIONS applies to *: name a path, such as /"
    assert status(service.raw(b"OPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n")) == 200


@pytest.mark.parametrize("path", ["/data/%ff", "/%C3%28", "/problem/%80/blob"])
def test_aPathNotUTF8Is400JSON(service: Service, errors: list[dict[str, Any]], path: str) -> None:
    code, message, _ = refusal(service.raw(request("GET", path)))
    assert code == 400
    assert message == (
        "the path must be UTF-8 once percent-decoded: percent-encode the UTF-8 of each character"
    )
    assert errors == []


def test_aHostNotUTF8Is400JSON(service: Service) -> None:
    answer = service.raw(b"GET /health HTTP/1.1\r\nHost: \xff\r\n\r\n")
    code, message, _ = refusal(answer)
    assert (code, message.split(" must")[0]) == (400, "the Host header")


def test_aHandlerFailingUnexpectedlyIs500JSONAndLogged(
    service: Service, errors: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(service.objects, "list", broken)
    reply = service.request("GET", "/data")
    assert (reply.code, reply.error) == (
        500,
        "the service failed to answer this request; its log says why",
    )
    assert b"ZeroDivision" not in reply.body
    assert [e["log_failure"].type for e in errors if "log_failure" in e] == [ZeroDivisionError]
    errors.clear()


@pytest.mark.parametrize("suffix", ["", "/blob"])
def test_a412OnGETHasAJSONBodyAndHEADTheSameHeaders(service: Service, suffix: str) -> None:
    path = f"/data/{service.stored('data', b'some bytes')['uuid']}{suffix}"
    condition = {"If-Match": '"another"'}
    get, head = (service.raw(request(m, path, condition)) for m in ("GET", "HEAD"))
    code, message, getHeaders = refusal(get)
    assert code == 412 and "If-Match" in message
    assert status(head) == 412 and head.endswith(b"\r\n\r\n")
    headHeaders = responseHeaders(head)
    assert {k: v for k, v in getHeaders.items() if k != "date"} == {
        k: v for k, v in headHeaders.items() if k != "date"
    }
