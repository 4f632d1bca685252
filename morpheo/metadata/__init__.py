# -*- test-case-name: tests.integration.test_metadata_contract -*-
"""
The metadata stores: where the objects' rows live.  Both provide
L{morpheo._interfaces.IMetadataStore}: L{PostgresMetadataStore} on a
L{Database} migrated with L{migrate} (on an L{EmbeddedPostgres} when no
database is configured), and L{MemoryMetadataStore} for development and
tests.
"""

from __future__ import annotations

from ._embedded import EmbeddedPostgres
from ._memory import MemoryMetadataStore
from ._migrations import MigrationError
from ._postgres import ChangeListener, Database, MetadataStore, PostgresMetadataStore

__all__ = [
    "ChangeListener",
    "Database",
    "EmbeddedPostgres",
    "MemoryMetadataStore",
    "MetadataStore",
    "MigrationError",
    "PostgresMetadataStore",
]
