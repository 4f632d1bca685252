"""
The routes over the streaming layer as a client on the wire sees them,
byte for byte, on connections kept open: C{Expect: 100-continue}, answers
decided from the headers sent before the body is read, keep-alive after an
early answer, a chunked model, HEAD's headers, the lingering close and the
idle timeout on the clock, and malformed HTTP (more in L{test_parser}).
"""

from __future__ import annotations

import pytest

from morpheo.web._streaming import DISCARD_LIMIT, LINGER_SECONDS

from .harness import (
    FORM_TYPE,
    Service,
    basic,
    fieldsFor,
    form,
    newUUID,
    request,
    responseHeaders,
    status,
    statuses,
)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
BLOB = bytes(range(256)) * 40


def formRequest(path: str, body: bytes, **headers: str) -> bytes:
    return request("POST", path, {"Content-Type": FORM_TYPE, **headers}, length=len(body))


def test_anAcceptedUploadIsToldToContinueAndThenStored(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB)
    connection = service.connect()
    assert connection.send(formRequest("/data", body, Expect="100-continue")) == CONTINUE
    assert status(connection.send(body)) == 201
    assert [service.blobs._blobs[k] for k in service.blobKeys()] == [BLOB]


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/data", {"Authorization": basic(password="wrong")}, 401),
        ("/floppy", {}, 404),
        ("/model?algo={uuid}", {}, 404),
        ("/model?algo=nope", {}, 400),
        ("/model?algo={uuid}", {"Transfer-Encoding": "chunked"}, 404),
    ],
)
def test_aRefusalFromTheHeadersIsSentWithoutAskingForTheBody(
    service: Service, path: str, headers: dict[str, str], code: int
) -> None:
    connection = service.connect()
    framing = {} if "Transfer-Encoding" in headers else {"Content-Length": "5000"}
    answer = connection.send(
        request(
            "POST", path.format(uuid=newUUID()), {"Expect": "100-continue", **framing, **headers}
        )
    )
    assert statuses(answer) == [code]
    # The client still waits to be told to continue: the connection cannot
    # carry another request, and is closed after a linger.
    assert responseHeaders(answer)["connection"] == "close"
    assert not connection.closed
    service.advance(LINGER_SECONDS)
    assert connection.closed
    service.assertNothingLeft()


def test_a413FromTheLengthIsSentBeforeTheBody() -> None:
    service = Service(maxBlobSize=1000)
    connection = service.connect()
    answer = connection.send(
        request(
            "POST",
            "/data",
            {"Content-Type": FORM_TYPE, "Content-Length": "10000000", "Expect": "100-continue"},
        )
    )
    assert statuses(answer) == [413]
    assert b"larger than the maximum of 1000 bytes" in answer


def test_aTakenUUIDIsAnsweredBeforeTheBlobAndTheConnectionKept(service: Service) -> None:
    uuid = service.stored("data", b"first")["uuid"]
    blob = b"y" * 5000
    body = form(fieldsFor("data", blob, uuid=uuid), blob)
    blobStarts = body.index(blob)
    connection = service.connect()
    answer = connection.send(formRequest("/data", body) + body[:blobStarts])
    assert status(answer) == 409
    assert "connection" not in responseHeaders(answer)
    connection.send(body[blobStarts:])
    assert status(connection.send(request("GET", "/health"))) == 200
    assert not connection.closed
    assert service.blobs._blobs[service.blobKeys()[0]] == b"first"


def test_anEarlyAnswerToABodyOverTheDiscardLimitClosesAfterALinger(service: Service) -> None:
    connection = service.connect()
    head = request("POST", "/data", {"Content-Type": "text/plain"}, length=DISCARD_LIMIT * 3)
    answer = connection.send(head + b"z" * 1000)
    assert status(answer) == 400
    assert responseHeaders(answer)["connection"] == "close"
    connection.send(b"z" * 100_000)
    assert not connection.closed
    service.advance(LINGER_SECONDS)
    assert connection.closed


def test_requestsFollowOneAnotherOnOneConnection(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB)
    connection = service.connect()
    assert status(connection.send(formRequest("/data", body) + body)) == 201
    assert status(connection.send(request("GET", "/data"))) == 200
    assert status(connection.send(request("GET", "/floppy"))) == 404
    assert not connection.closed


def test_aChunkedFormIsStreamedToTheStore(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB)
    chunks = [body[i : i + 700] for i in range(0, len(body), 700)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    connection = service.connect()
    headers = {"Content-Type": FORM_TYPE, "Transfer-Encoding": "chunked"}
    answer = connection.send(request("POST", "/data", headers, chunked))
    assert status(answer) == 201
    assert b'"size": %d' % len(BLOB) in answer


def test_anUploadArrivingInPiecesIsStoredWhole(service: Service) -> None:
    body = form(fieldsFor("data", BLOB), BLOB)
    connection = service.connect()
    connection.send(formRequest("/data", body))
    for start in range(0, len(body), 333):
        connection.send(body[start : start + 333])
    assert status(connection.received) == 201
    assert [service.blobs._blobs[k] for k in service.blobKeys()] == [BLOB]


def test_aChunkedModelIsStoredAndTheConnectionSurvives(service: Service) -> None:
    algo = service.algo()
    connection = service.connect()
    headers = {"Transfer-Encoding": "chunked"}
    answer = connection.send(
        request("POST", f"/model?algo={algo}", headers, b"5\r\nhello\r\n0\r\n\r\n")
    )
    assert status(answer) == 201
    assert b'"size": 5' in answer
    assert status(connection.send(request("GET", "/health"))) == 200
    [model] = [k for k in service.blobKeys() if k.startswith("model/")]
    assert service.blobs._blobs[model] == b"hello"


@pytest.mark.parametrize("suffix", ["", "/blob"])
def test_headCarriesTheHeadersOfGetOnTheWire(service: Service, suffix: str) -> None:
    # Twisted's client drops a HEAD's Content-Length: read the wire.
    path = f"/data/{service.stored('data', BLOB)['uuid']}{suffix}"
    get, head = (service.connect().send(request(m, path)) for m in ("GET", "HEAD"))
    assert head.endswith(b"\r\n\r\n")
    without = [{k: v for k, v in responseHeaders(r).items() if k != "date"} for r in (get, head)]
    assert without[0] == without[1] and int(without[1]["content-length"]) > 0


def test_anIdleConnectionIsClosedAfterTheTimeout(service: Service) -> None:
    connection = service.connect()
    connection.send(request("GET", "/health"))
    service.advance(59)
    assert not connection.closed
    service.advance(2)
    assert connection.closed


def test_aMalformedRequestLineIs400AndCloses(service: Service) -> None:
    connection = service.connect()
    answer = connection.send(b"NOT HTTP AT ALL\r\n\r\n")
    assert status(answer) == 400
    assert answer.endswith(
        b'{"error": "the request line must be METHOD TARGET HTTP/1.1, three parts separated'
        b' by single spaces"}\n'
    )
    service.advance(LINGER_SECONDS)
    assert connection.closed


def test_aContentLengthThatIsNotANumberIs400AndCloses(service: Service) -> None:
    connection = service.connect()
    answer = connection.send(b"POST /data HTTP/1.1\r\nHost: s\r\nContent-Length: many\r\n\r\n")
    assert status(answer) == 400
    assert b"Content-Length must be a number of bytes, not 'many'" in answer
    service.advance(LINGER_SECONDS)
    assert connection.closed


def test_anHTTP10RequestIsAnsweredThenClosed(service: Service) -> None:
    connection = service.connect()
    answer = connection.send(b"GET /health HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert answer.endswith(b'{"status": "ok"}\n')
    assert connection.closed


def test_aHeaderBlockTooLargeIs431(service: Service) -> None:
    connection = service.connect()
    filler = b"".join(b"X-Filler-%d: x\r\n" % i for i in range(600))
    answer = connection.send(b"GET /health HTTP/1.1\r\nHost: s\r\n" + filler + b"\r\n")
    assert status(answer) == 431
    assert answer.endswith(b'{"error": "the request has more than 500 header lines"}\n')
