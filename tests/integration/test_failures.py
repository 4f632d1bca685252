"""
Limits and failures of the parts behind the API, on servers of their own
(one with a size limit, one broken part by part): 413 from the headers or
the size field, a blob store that cannot write (500), a database that goes
away (503).  Nothing is left behind.
"""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
import treq

from tests.integration.helpers import (
    assertClean,
    assertError,
    eventually,
    formHead,
    jsonOf,
    newUUID,
    post,
    rawRequest,
    readResponseHead,
)
from tests.integration.servers import startServer

LIMIT = 1000


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    s = startServer(str(tmp_path_factory.mktemp("limited")), "--max-blob-size", str(LIMIT))
    yield s
    s.stop()


@pytest_twisted.ensureDeferred
async def test_413_from_the_size_field(http, limited):
    before = limited.files()
    data = os.urandom(LIMIT + 1)
    r = await post(http, limited, "data", data)
    await assertError(r, 413, str(LIMIT))
    assertClean(limited, before)
    r = await post(http, limited, "data", data[:LIMIT])
    assert r.code == 201


def test_413_from_the_headers_before_the_body(limited):
    """A model's Content-Length, or a form's, over the limit is refused
    without asking for the body."""
    head = (
        f"POST /model?algo={newUUID()} HTTP/1.1\nHost: x\nExpect: 100-continue\n"
        f"Content-Length: {LIMIT + 1}"
    )
    s = rawRequest(limited, head)
    response = readResponseHead(s)
    s.close()
    assert response.startswith(b"HTTP/1.1 413 "), response
    assert b"100 Continue" not in response
    head = formHead(5000000000, "Expect: 100-continue")
    s = rawRequest(limited, head)
    response = readResponseHead(s)
    s.close()
    assert response.startswith(b"HTTP/1.1 413 "), response


@pytest_twisted.ensureDeferred
async def test_500_when_the_blob_store_cannot_write_then_503_when_the_database_is_gone(
    http, tmp_path
):
    """
    One server, broken part by part: first its blob store (for one kind),
    then its database.  Each failure is answered, and leaves nothing.
    """
    server = startServer(str(tmp_path / "breaking"))
    try:
        # A file where the kind's directory should be: every write fails.
        os.makedirs(server.blobDir, exist_ok=True)
        with open(os.path.join(server.blobDir, "prediction"), "w") as f:
            f.write("in the way")
        before = server.files()
        uuid = newUUID()
        r = await post(http, server, "prediction", b"p" * 5000, uuid=uuid)
        message = await assertError(r, 500, "blob store (local) failed")
        # Which store, not where: the path and the system's words are the log's.
        assert server.dataDir not in message and "Errno" not in message
        assert "blob store failure" in server.log()
        assertClean(server, before)
        assert server.sql("SELECT count(*) FROM resource") == [(0,)]
        r = await post(http, server, "data", b"d", uuid=uuid)
        assert r.code == 201

        # The database goes: its postmaster is killed.
        r = await post(http, server, "data", b"kept")
        assert r.code == 201
        before = server.files()
        with open(os.path.join(server.dataDir, "postgres", "postmaster.pid")) as f:
            os.kill(int(f.readline()), signal.SIGQUIT)

        async def gone() -> None:
            # Its sessions may answer a moment longer.
            r = await http.get(f"{server.url}/data", auth=server.auth)
            await assertError(r, 503, "metadata database")

        await eventually(gone, timeout=10)
        r = await post(http, server, "data", b"lost")
        await assertError(r, 503, "metadata database")
        assert server.files() == before
        r = await http.get(f"{server.url}/health")
        assert r.code == 200 and await jsonOf(r) == {"status": "ok"}
        assert await treq.content(r)
    finally:
        server.stop()
