"""
The access log through real twistd servers: one line per request with its
method, path, status, bytes in and out, duration, client address and user;
C{--log-format json} makes every line of the log one JSON object; a request
whose client goes away (an upload cut mid-body, a download cut mid-body, an
upload given up after C{100 Continue}) is logged as aborted, never as a 500,
without a traceback; passwords never reach the log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket

import pytest
import pytest_twisted
import treq
from twisted.python.failure import Failure

from morpheo.service._jsonlog import eventAsLine
from tests.integration.helpers import (
    FORM_HEADERS,
    eventually,
    form,
    formHead,
    newUUID,
    openForm,
    rawRequest,
    rawUpload,
    readResponseHead,
    upload,
    uploadFields,
)
from tests.integration.servers import PASSWORD, USER, Server, startServer

TIMEOUT = 30
WRONG = "not-the-password-9c1f"

#: The text line: client user "METHOD path" status in=N out=N 0.123s
TEXT_LINE = re.compile(
    r'\[morpheo\.access#info\] (?P<client>\S+) (?P<user>\S+) "(?P<method>\S+) (?P<path>\S+)"'
    r" (?P<status>\S+) in=(?P<bytesIn>\d+) out=(?P<bytesOut>\d+) (?P<duration>[\d.]+)s"
    r"(?P<aborted> \(aborted\))?$"
)


@pytest.fixture
def textServer(server: Server) -> Server:
    """Text is the default: the session's server, whose log has every test's lines."""
    return server


@pytest.fixture(scope="module")
def ownTextServer(tmp_path_factory):
    """A text log for this module alone: all of it is checked for tracebacks."""
    s = startServer(str(tmp_path_factory.mktemp("log-text")))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def jsonServer(tmp_path_factory):
    s = startServer(str(tmp_path_factory.mktemp("log-json")), "--log-format", "json")
    yield s
    s.stop()


def textLines(server: Server) -> list[dict[str, str]]:
    return [m.groupdict() for line in server.log().splitlines() if (m := TEXT_LINE.search(line))]


def jsonLines(server: Server) -> list[dict]:
    """Every line of the log, each one JSON object (or the test fails)."""
    return [json.loads(line) for line in server.log().splitlines()]


def accessLines(server: Server, path: str, json: bool) -> list[dict]:
    if json:
        return [e for e in jsonLines(server) if e.get("type") == "access" and e["path"] == path]
    return [e for e in textLines(server) if e["path"] == path]


async def logged(server: Server, path: str, json: bool = False, count: int = 1) -> list[dict]:
    """The access lines of C{path}, once there are C{count} (they follow the response)."""
    found: list[dict] = []

    def check() -> None:
        found[:] = accessLines(server, path, json)
        assert len(found) >= count

    await eventually(check)
    return found


async def exercise(http, server: Server) -> dict[str, object]:
    """
    An upload, its download, a 401 and a wrong password: the paths and the
    sizes the log should show.
    """
    data = os.urandom(200_000)
    uuid = newUUID()
    body = form(*uploadFields("data", data, uuid=uuid))
    # The uuid in the query (ignored) tells this upload's line from the others'.
    r = await http.post(
        f"{server.url}/data?{uuid}",
        data=body,
        headers=FORM_HEADERS,
        auth=server.auth,
        timeout=TIMEOUT,
    )
    assert r.code == 201
    uploaded = await treq.content(r)
    r = await http.get(f"{server.url}/data/{uuid}/blob", auth=server.auth, timeout=TIMEOUT)
    assert await treq.content(r) == data
    r = await http.get(f"{server.url}/data/{uuid}", timeout=TIMEOUT)
    assert r.code == 401
    refused = await treq.content(r)
    r = await http.get(f"{server.url}/data/{uuid}?wrong", auth=(USER, WRONG), timeout=TIMEOUT)
    assert r.code == 401
    return {"uuid": uuid, "body": body, "data": data, "uploaded": uploaded, "refused": refused}


def assertNoPassword(server: Server) -> None:
    log = server.log()
    for secret in (PASSWORD, WRONG):
        assert secret not in log
        for token in (f"{USER}:{secret}", secret):
            assert base64.b64encode(token.encode()).decode() not in log


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest_twisted.ensureDeferred
async def test_oneLinePerRequest(http, request, fmt) -> None:
    server = request.getfixturevalue(f"{fmt}Server")
    asJSON = fmt == "json"
    done = await exercise(http, server)
    uuid = done["uuid"]

    [upload] = [e for e in await logged(server, f"/data?{uuid}", asJSON) if e["method"] == "POST"]
    [download] = await logged(server, f"/data/{uuid}/blob", asJSON)
    [refused] = await logged(server, f"/data/{uuid}", asJSON)
    [wrong] = await logged(server, f"/data/{uuid}?wrong", asJSON)

    def num(value: object) -> int:
        return int(str(value))

    assert (upload["user"], num(upload["status"])) == (USER, 201)
    assert num(upload["bytesIn"]) == len(done["body"])  # type: ignore[arg-type]
    assert num(upload["bytesOut"]) == len(done["uploaded"])  # type: ignore[arg-type]
    assert (download["method"], num(download["status"])) == ("GET", 200)
    assert num(download["bytesIn"]) == 0
    assert num(download["bytesOut"]) == len(done["data"])  # type: ignore[arg-type]
    assert (refused["user"], num(refused["status"])) == ("-", 401)
    assert num(refused["bytesOut"]) == len(done["refused"])  # type: ignore[arg-type]
    assert (wrong["user"], num(wrong["status"])) == ("-", 401)
    for line in (upload, download, refused, wrong):
        assert line["client"] == "127.0.0.1"
        assert 0 <= float(line["duration"]) < TIMEOUT
        assert line["aborted"] in (None, False)
    if asJSON:
        assert upload["namespace"] == "morpheo.access" and upload["level"] == "info"
        assert f'{USER} "POST /data?{uuid}" 201' in upload["message"]
        assert isinstance(upload["duration"], float) and isinstance(upload["status"], int)
    assertNoPassword(server)


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest_twisted.ensureDeferred
async def test_abortedUpload(request, fmt) -> None:
    """
    An upload whose client goes away mid-body: one line, aborted, with what
    came in; no traceback.
    """
    server = request.getfixturevalue(f"{fmt}Server")
    uuid = newUUID()
    size = 32 * 1024 * 1024
    sent = len(openForm(uuid, size)) + 1024 * 1024
    s = rawUpload(server, uuid, size, 1024 * 1024, path=f"/data?{uuid}")
    try:

        def writing() -> None:
            assert server.sql("SELECT state FROM resource WHERE uuid = %s", (uuid,)) == [
                ("pending",)
            ]

        await eventually(writing)
    finally:
        s.close()
    await logged(server, f"/data?{uuid}", fmt == "json")

    def released() -> None:
        assert server.sql("SELECT count(*) FROM resource WHERE uuid = %s", (uuid,)) == [(0,)]

    await eventually(released)
    # Once, even after the handler has cleaned up.
    [line] = accessLines(server, f"/data?{uuid}", fmt == "json")
    assert line["status"] == "-"
    assert line["user"] == USER
    assert int(line["bytesIn"]) == sent
    assert line["aborted"] in (True, " (aborted)")
    # The handler cleaned up in full, though Klein cancelled it, and ended
    # quietly: the access line is the only news of a client going away.
    log = server.log()
    assert "clean-up after a failed request failed" not in log
    assert "Unhandled Error" not in log and "BodyAborted" not in log


#: What a failure logged as an error leaves in a text log.
ERROR_LINE = re.compile(r"#(critical|error)\]")


def assertNoError(server: Server, json: bool) -> None:
    """
    Nothing in the whole log of C{server} is an error: no critical or
    error line, no traceback, no unhandled error.
    """
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
    if json:
        for event in jsonLines(server):
            assert event["level"] not in ("critical", "error"), event
            assert "failure" not in event, event
    else:
        assert not ERROR_LINE.search(log), log[-5000:]


@pytest.mark.parametrize("fmt", ["ownText", "json"])
@pytest_twisted.ensureDeferred
async def test_downloadsCutByTheClient(http, request, fmt) -> None:
    """
    Downloads whose clients close their sockets mid-body, after more or
    less of it: each is one line, aborted, with the 200 its head carried
    and what was sent, no 500, and no traceback anywhere in the log.
    """
    server = request.getfixturevalue(f"{fmt}Server")
    asJSON = fmt == "json"
    size = 24 * 1024 * 1024
    uuid = (await upload(http, server, "data", os.urandom(size)))["uuid"]
    cuts = [1, 64 * 1024, 1024 * 1024, 3 * 1024 * 1024, 5 * 1024 * 1024]
    for i, cut in enumerate(cuts):
        s = rawRequest(server, f"GET /data/{uuid}/blob?cut{i} HTTP/1.1\nHost: x")
        try:
            head = readResponseHead(s)
            assert head.startswith(b"HTTP/1.1 200 "), head[:200]
            received = len(head.partition(b"\r\n\r\n")[2])
            while received < cut:
                chunk = s.recv(65536)
                assert chunk, "the server closed first"
                received += len(chunk)
        finally:
            s.close()
    for i in range(len(cuts)):
        [line] = await logged(server, f"/data/{uuid}/blob?cut{i}", asJSON)
        assert line["aborted"] in (True, " (aborted)"), line
        assert int(line["status"]) == 200, line
        assert line["user"] == USER
        assert 0 < int(line["bytesOut"]) < size, line
    assertNoError(server, asJSON)


@pytest.mark.parametrize("fmt", ["ownText", "json"])
@pytest_twisted.ensureDeferred
async def test_uploadsGivenUpAfter100Continue(request, fmt) -> None:
    """
    Uploads sent with C{Expect: 100-continue} whose clients close as soon
    as they are told to continue: each is one line, aborted, status C{-},
    nothing received; not a 200; no traceback in the log.
    """
    server = request.getfixturevalue(f"{fmt}Server")
    asJSON = fmt == "json"
    paths = [f"/data?continued-{newUUID()}" for _ in range(3)]
    for path in paths:
        body = form(*uploadFields("data", os.urandom(4 * 1024 * 1024)))
        s = rawRequest(server, formHead(len(body), "Expect: 100-continue", path=path))
        try:
            assert readResponseHead(s).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        finally:
            # Close at once, with nothing unread: a clean FIN, not a reset.
            s.shutdown(socket.SHUT_RDWR)
            s.close()
    for path in paths:
        [line] = await logged(server, path, asJSON)
        assert line["aborted"] in (True, " (aborted)"), line
        assert line["status"] == "-", line
        assert int(line["bytesIn"]) == 0 and int(line["bytesOut"]) == 0, line
    assertNoError(server, asJSON)


def test_everyJSONLineIsAnObject(jsonServer) -> None:
    """Start-up, warnings and access lines alike: a log shipper parses every line."""
    lines = jsonLines(jsonServer)
    assert any("listening on" in e["message"] for e in lines)
    for event in lines:
        assert {"time", "level", "namespace", "message"} <= set(event)


def test_failureAsJSON() -> None:
    """A failure's traceback goes in its line, escaped: still one line."""
    try:
        raise ZeroDivisionError("no")
    except ZeroDivisionError:
        failure = Failure()
    line = eventAsLine(
        {"log_format": "it failed", "log_failure": failure, "log_time": 0.0, "log_namespace": "x"}
    )
    assert line.endswith("\n") and line.count("\n") == 1
    event = json.loads(line)
    assert event["message"] == "it failed"
    assert "ZeroDivisionError" in event["failure"]
    assert event["time"] == "1970-01-01T00:00:00.000+00:00"
