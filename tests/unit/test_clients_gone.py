"""
Clients that go away, in memory, as the access log tells it: a download
cut mid-body, an upload given up after C{100 Continue}, an upload cut
mid-body.  Each request is logged once, as aborted, never as the 500 of a
handler that the loss made fail, and no error is logged.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import LogEvent

from morpheo.web._accesslog import ACCESS_NAMESPACE

from .harness import (
    FORM_TYPE,
    USER,
    Service,
    capturedLog,
    errors,
    fieldsFor,
    form,
    newUUID,
    request,
)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def accessLines(events: list[LogEvent], path: str) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == ACCESS_NAMESPACE and e["path"] == path]


def stored(service: Service, size: int) -> dict[str, Any]:
    return service.stored("data", bytes(range(256)) * (size // 256))


def test_aDownloadReadToItsEndIsNotAborted(service: Service) -> None:
    """What the tests below tell apart: a whole download is its 200."""
    uuid = stored(service, 1024 * 1024)["uuid"]
    with capturedLog() as events:
        assert service.request("GET", f"/data/{uuid}/blob").code == 200
    [line] = accessLines(events, f"/data/{uuid}/blob")
    assert (line["status"], line["aborted"], line["bytesOut"]) == (200, False, 1024 * 1024)
    assert errors(events) == []


@pytest.mark.parametrize("cut", [1, 300_000, 1_000_000])
def test_aDownloadCutMidBodyIsAborted(service: Service, cut: int) -> None:
    """
    The client closes after C{cut} bytes of a 2 MiB blob: the producer it
    stopped fails the handler, which is no 500; the line says the 200 the
    head carried, and aborted.
    """
    size = 2 * 1024 * 1024
    uuid = stored(service, size)["uuid"]
    path = f"/data/{uuid}/blob"
    with capturedLog() as events:
        connection = service.connect()
        received = connection.sendAndReceive(request("GET", path), cut)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        connection.abort()
        service.advance(1)
    [line] = accessLines(events, path)
    assert (line["status"], line["aborted"], line["user"]) == (200, True, USER)
    assert 0 < line["bytesOut"] < size
    assert errors(events) == []
    # The service goes on serving.
    assert service.request("GET", path).code == 200


def test_anUploadGivenUpAfter100ContinueIsAborted(service: Service) -> None:
    """
    The client is told to continue and closes at once: the form reader's
    failure ends the handler quietly, and its end is not taken for a 200.
    """
    blob = b"x" * 100_000
    body = form(fieldsFor("data", blob), blob)
    before = service.snapshot()
    with capturedLog() as events:
        connection = service.connect()
        head = request(
            "POST",
            "/data?given-up",
            {"Content-Type": FORM_TYPE, "Expect": "100-continue"},
            length=len(body),
        )
        assert connection.send(head) == CONTINUE
        connection.close()
        service.advance(1)
    [line] = accessLines(events, "/data?given-up")
    assert (line["status"], line["aborted"], line["bytesIn"], line["bytesOut"]) == (
        "-",
        True,
        0,
        0,
    )
    assert errors(events) == []
    service.assertNothingLeft(before)


def test_anUploadCutMidBodyIsAborted(service: Service) -> None:
    uuid = newUUID()
    with capturedLog() as events:
        service.startUpload("data", uuid).close()
        service.advance(1)
    [line] = accessLines(events, "/data")
    assert (line["status"], line["aborted"]) == ("-", True)
    assert line["bytesIn"] > 0
    assert errors(events) == []
    service.assertNothingLeft()
