"""
The access log through real twistd servers: one line per request with its
method, path, status, bytes in and out, duration, client address and user;
C{--log-format json} makes every line of the log one JSON object; an upload
cut by its client is logged as aborted; passwords never reach the log.
"""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
import pytest_twisted
import treq
from twisted.python.failure import Failure

from morpheo.service._jsonlog import eventAsLine
from tests.integration.helpers import (
    FORM_HEADERS,
    eventually,
    form,
    newUUID,
    openForm,
    rawUpload,
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
