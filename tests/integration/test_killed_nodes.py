"""
Two nodes on one external PostgreSQL and one bucket, as in a cluster: node A
is SIGKILLed in the middle of an upload, and within two claim leases node B
has freed the uuid and removed what the upload had started in the store,
which A can no longer do: its resumable session on Google Cloud Storage
(fake-gcs-server), found by the URL that A recorded in the claim, or its
multipart upload on S3 (SeaweedFS), found by its key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.integration.helpers import (
    curlOK,
    form,
    formHead,
    newUUID,
    openForm,
    rawRequest,
    rawUpload,
)
from tests.integration.servers import FakeGCS, SeaweedFS, Server, startServer, waitUntil

#: The claim lease of both nodes, in seconds: short, so that the test is.
LEASE = 2.0
MiB = 1024 * 1024


def dbArgs(dsn: str) -> list[str]:
    """The command line of a node on the database of C{dsn}."""
    parts = dict(item.split("=", 1) for item in dsn.split())
    return [
        "--db-host", parts["host"], "--db-port", parts["port"],
        "--db-name", parts["dbname"], "--db-user", parts["user"],
    ]  # fmt: skip


def sql(dsn: str, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(dsn)
    try:
        connection.autocommit = True
        with connection.cursor() as cur:
            cur.execute(query, args)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    finally:
        connection.close()


@pytest.fixture
def gcs() -> Iterator[FakeGCS]:
    """An emulator of this test's own: its bucket holds only what the test stores."""
    with FakeGCS() as store:
        yield store


def killMidUpload(
    tmp_path: Path,
    dsn: str,
    storeArgs: list[str],
    env: dict[str, str],
    size: int,
    started: Callable[[str], object],
    gone: Callable[[str], object],
) -> tuple[str, str]:
    """
    Start nodes A and B, send part of an upload of C{size} bytes through A
    and wait until C{started(uuid)} (what the store holds of it), SIGKILL
    A, and check that within two leases B has freed the uuid, with
    C{gone(uuid)} true by then; the uuid and the key of the blob that B
    then stored under it.
    """
    args = [*dbArgs(dsn), *storeArgs, "--claim-lease", str(LEASE)]
    a = startServer(str(tmp_path / "a"), *args, env=env)
    b: Server | None = None
    uuid = newUUID()
    upload = None
    try:
        b = startServer(str(tmp_path / "b"), *args, env=env)
        upload = rawUpload(a, uuid, size, 3 * MiB)
        waitUntil(lambda: started(uuid), 30, "the upload under way in the store")
        a.kill()
        killed = time.monotonic()
        claimed = "SELECT state FROM resource WHERE kind = 'data' AND uuid = %s"
        waitUntil(lambda: sql(dsn, claimed, (uuid,)) == [], 2 * LEASE, "the uuid freed by B")
        assert time.monotonic() - killed <= 2 * LEASE
        assert gone(uuid)
        assert "swept 1 dead claims" in b.log()

        blob = tmp_path / "again.bin"
        blob.write_bytes(b"B's blob")
        out = curlOK(
            b, "-F", f"uuid={uuid}", "-F", "size=8", "-F", f"blob=@{blob}", f"{b.url}/data"
        )
        assert json.loads(out)["uuid"] == uuid
        [(state, key)] = sql(dsn, "SELECT state, blob_key FROM resource WHERE uuid = %s", (uuid,))
        assert state == "ready"
        return uuid, key
    finally:
        if upload is not None:
            upload.close()
        a.stop()
        if b is not None:
            b.stop()


def test_a_killed_nodes_gcs_session_is_cancelled_by_another_node(
    tmp_path: Path, dsn: str, gcs: FakeGCS
) -> None:
    """
    A records its session's URL in the claim as soon as GCS gives it; B,
    sweeping the dead claim, cancels that session with a DELETE, which
    fake-gcs-server answers 499.  (This emulator would still take chunks on
    the session afterwards, so its request log is what shows the cancel.)
    """
    sessions: list[str] = []

    def recorded(uuid: str) -> bool:
        rows = sql(dsn, "SELECT upload_handle FROM resource WHERE uuid = %s", (uuid,))
        if not rows or rows[0][0] is None:
            return False
        sessions.append(rows[0][0])
        # Not cancelled yet: A, alive, is sending its chunks.
        assert not cancels(sessions[0])
        return True

    def cancels(session: str) -> list[tuple[str, str, int]]:
        parts = urlsplit(session)
        target = f"{parts.path}?{parts.query}"
        return [r for r in gcs.requests() if r[:2] == ("DELETE", target)]

    uuid, key = killMidUpload(
        tmp_path,
        dsn,
        gcs.serverArgs(),
        gcs.serverEnv(),
        8 * MiB,
        recorded,
        lambda uuid: [status for _, _, status in cancels(sessions[0])] == [499],
    )
    session = urlsplit(sessions[0])
    assert f"{session.scheme}://{session.netloc}" == gcs.endpoint
    assert session.path == f"/upload/storage/v1/b/{gcs.bucket}/o"
    assert gcs.objects() == [key]


def test_a_killed_nodes_s3_multipart_upload_is_aborted_by_another_node(
    tmp_path: Path, dsn: str, seaweedfs: SeaweedFS
) -> None:
    """
    A's upload, declared larger than one PUT, is a multipart upload; B,
    sweeping the dead claim, finds it by its key and aborts it.  S3 needs no
    handle for that: none is recorded.
    """

    def inFlight(uuid: str) -> bool:
        rows = sql(dsn, "SELECT upload_handle FROM resource WHERE uuid = %s", (uuid,))
        assert rows in ([], [(None,)])
        return bool(rows) and len(seaweedfs.uploads(f"data/{uuid}")) == 1

    uuid, key = killMidUpload(
        tmp_path,
        dsn,
        seaweedfs.serverArgs(),
        seaweedfs.serverEnv(),
        256 * MiB,
        inFlight,
        lambda uuid: seaweedfs.uploads(f"data/{uuid}") == [],
    )
    assert seaweedfs.uploads(f"data/{uuid}") == []
    assert seaweedfs.objects(f"data/{uuid}") == [key]


def test_a_record_held_up_when_its_client_goes_is_waited_for(
    tmp_path: Path, dsn: str, gcs: FakeGCS
) -> None:
    """
    The record of an upload's session is held up in the database (a lock
    on its row) while the whole blob arrives and is committed, and then the
    client goes away.  The request is cancelled, but neither the commit nor
    the record: once the lock is gone they end, and the upload with them,
    stored and served (no object left in the bucket without its row).
    """
    server = startServer(str(tmp_path / "node"), *dbArgs(dsn), *gcs.serverArgs())
    locker = psycopg2.connect(dsn)
    uuid, data = newUUID(), os.urandom(MiB)
    body = form(("uuid", uuid), ("size", str(len(data))), ("blob", data))
    fields = len(openForm(uuid, len(data)))
    try:
        # The fields only: the uuid is claimed, the session not begun.
        upload = rawRequest(server, formHead(len(body)), body[:fields])
        row = "SELECT state, upload_handle FROM resource WHERE uuid = %s"
        waitUntil(lambda: sql(dsn, row, (uuid,)) == [("pending", None)], 20, "the claim")
        with locker.cursor() as cur:
            cur.execute("SELECT 1 FROM resource WHERE uuid = %s FOR UPDATE", (uuid,))
        upload.sendall(body[fields:])

        def recordWaiting() -> bool:
            rows = sql(
                dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'UPDATE resource SET upload_handle%%'",
            )
            return bool(rows[0][0])

        waitUntil(recordWaiting, 20, "the record waiting for the lock")
        # The blob is committed; the upload waits for its record.
        waitUntil(lambda: len(gcs.objects(f"data/{uuid}")) == 1, 20, "the blob committed")
        upload.close()
        time.sleep(0.5)
        assert sql(dsn, row, (uuid,)) == [("pending", None)]
        locker.commit()
        # The client went once the blob was in the bucket, its commit
        # answered or still in flight: the commit is waited for, and then
        # the record, and the upload ends, stored and served.
        ended = [("ready", None)]
        waitUntil(lambda: sql(dsn, row, (uuid,)) == ended, 10, "the upload ended")
        [(key,)] = sql(dsn, "SELECT blob_key FROM resource WHERE uuid = %s", (uuid,))
        assert gcs.objects(f"data/{uuid}") == [key]
        stored = json.loads(curlOK(server, f"{server.url}/data/{uuid}"))
        assert stored["sha256"] == hashlib.sha256(data).hexdigest()
        log = server.log()
        assert "recording the upload" not in log and "Traceback" not in log, log
    finally:
        locker.close()
        server.stop()
