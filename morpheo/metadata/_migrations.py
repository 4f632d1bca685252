# -*- test-case-name: tests.integration.test_migrations -*-
"""
Schema migrations: ordered SQL files, each applied in its own transaction
and recorded in C{schema_migrations}; the last one can be rolled back.

A PostgreSQL advisory lock keeps two starting services from migrating at
the same time.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred

from ._postgres import Database

_FILE = re.compile(r"^(\d+)_([A-Za-z0-9_-]+)\.(up|down)\.sql$")
_LOCK = 0x6D6F7270  # "morp"


class MigrationError(Exception):
    """The migrations directory or the recorded schema is not usable."""


@frozen
class Migration:
    version: int
    name: str
    up: str
    down: str


def defaultMigrationsDir() -> str:
    """
    The migrations that came with this code: C{schema/} beside the package
    in a source checkout, else where C{pip install} put them.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(os.path.dirname(os.path.dirname(here)), "schema"),
        os.path.join(sys.prefix, "share", "morpheo-storage", "schema"),
        os.path.join(sys.base_prefix, "share", "morpheo-storage", "schema"),
    ]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "0001_resources.up.sql")):
            return candidate
    raise MigrationError(
        "cannot find the schema migrations; give --db-migrations-dir (looked in "
        + ", ".join(candidates)
        + ")"
    )


def loadMigrations(directory: str) -> list[Migration]:
    """Read C{directory}; every version needs both an up and a down file."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise MigrationError(f"cannot read migrations in {directory}: {e.strerror}") from e
    found: dict[int, dict[str, Any]] = {}
    for filename in names:
        m = _FILE.match(filename)
        if not m:
            continue
        version, name, direction = int(m.group(1)), m.group(2), m.group(3)
        entry = found.setdefault(version, {"name": name})
        if entry["name"] != name:
            raise MigrationError(f"two migrations are numbered {version} in {directory}")
        with open(os.path.join(directory, filename), encoding="utf-8") as f:
            entry[direction] = f.read()
    migrations = []
    for version in sorted(found):
        entry = found[version]
        for direction in ("up", "down"):
            if direction not in entry:
                raise MigrationError(
                    f"migration {version}_{entry['name']} has no {direction}.sql in {directory}"
                )
        migrations.append(Migration(version, entry["name"], entry["up"], entry["down"]))
    if not migrations:
        raise MigrationError(f"no migrations (NNNN_name.up.sql) in {directory}")
    return migrations


_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)


async def _applied(cursor: Any) -> list[int]:
    await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
    await cursor.execute(_BOOKKEEPING)
    await cursor.execute("SELECT version FROM schema_migrations ORDER BY version")
    return [row[0] for row in cursor.fetchall()]


async def migrate(db: Database, migrations: list[Migration]) -> list[int]:
    """Apply what is missing, in order; returns the versions applied."""
    applied: list[int] = []
    for migration in migrations:

        async def step(cursor: Any, m: Migration = migration) -> bool:
            done = await _applied(cursor)
            if m.version in done:
                return False
            if done and max(done) > m.version:
                raise MigrationError(
                    f"migration {m.version}_{m.name} is older than the applied {max(done)}"
                )
            await cursor.execute(m.up)
            await cursor.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (m.version, m.name),
            )
            return True

        if await db.interaction(lambda c, s=step: Deferred.fromCoroutine(s(c)), bounded=False):
            applied.append(migration.version)
    return applied


async def rollback(db: Database, migrations: list[Migration]) -> Migration | None:
    """Undo the last applied migration; L{None} if there is none."""
    byVersion = {m.version: m for m in migrations}

    async def step(cursor: Any) -> Migration | None:
        done = await _applied(cursor)
        if not done:
            return None
        last = max(done)
        if last not in byVersion:
            raise MigrationError(f"migration {last} is applied but has no down.sql here")
        m = byVersion[last]
        await cursor.execute(m.down)
        await cursor.execute("DELETE FROM schema_migrations WHERE version = %s", (last,))
        return m

    return await db.interaction(lambda c: Deferred.fromCoroutine(step(c)), bounded=False)
