"""
Liveness and readiness through a real twistd server: C{/ready} answers 200
while the database and the blob store both answer, 503 naming the one that
does not (its PostgreSQL killed, its blob directory gone), and 200 again once
each is back; C{/health} stays 200 throughout.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest_twisted

from tests.integration.helpers import eventually, jsonOf
from tests.integration.servers import startServer

TIMEOUT = 30


async def ready(http, server) -> tuple[int, dict[str, str]]:
    r = await http.get(f"{server.url}/ready", timeout=TIMEOUT)
    return r.code, await jsonOf(r)


async def healthy(http, server) -> None:
    r = await http.get(f"{server.url}/health", timeout=TIMEOUT)
    assert r.code == 200 and await jsonOf(r) == {"status": "ok"}


@pytest_twisted.ensureDeferred
async def test_ready_is_503_naming_the_failing_part_while_health_stays_200(http, tmp_path) -> None:
    server = startServer(str(tmp_path / "data"))
    try:
        assert await ready(http, server) == (
            200,
            {"status": "ready", "database": "ok", "blobstore": "ok"},
        )

        # The blob store goes: its directory is replaced by a file.
        shutil.rmtree(server.blobDir)
        with open(server.blobDir, "w") as f:
            f.write("not a directory")
        code, report = await ready(http, server)
        assert code == 503
        assert report["status"] == "not ready" and report["database"] == "ok"
        assert report["blobstore"].startswith("failing: ")
        await healthy(http, server)
        os.remove(server.blobDir)
        assert (await ready(http, server))[0] == 200

        # The database goes: its postmaster is killed.
        with open(os.path.join(server.dataDir, "postgres", "postmaster.pid")) as f:
            postmaster = int(f.readline())
        os.kill(postmaster, signal.SIGQUIT)

        async def notReady() -> None:
            code, report = await ready(http, server)
            assert code == 503, report
            assert report["status"] == "not ready" and report["blobstore"] == "ok"
            assert report["database"] == "unavailable"

        # The kill takes effect at once; a retry covers a slow exit.
        await eventually(notReady)
        await healthy(http, server)

        # The service starts its PostgreSQL again: ready again, on its own.
        async def readyAgain() -> None:
            assert (await ready(http, server))[0] == 200

        await eventually(readyAgain)
    finally:
        server.stop()
