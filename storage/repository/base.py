"""What every part of the repository shares: the engine, one transaction per public method, and
the one place that picks the SQLite or PostgreSQL flavour of ``INSERT … ON CONFLICT``."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from bot.dedupe import dedupe_key


class RepositoryBase:
    """The engine and the transaction helper the topic classes (jobs, conversations, feedback,
    channels) build their public methods on. Every public method is one ``_transaction()``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite allows one writer at a time and every transaction here begins IMMEDIATE. Threads of
        # this process take turns on a Python lock instead of colliding in SQLite's busy handler,
        # which sleeps in steps of up to 100 ms; other processes still wait on busy_timeout.
        self._local_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._local_lock, self.engine.begin() as connection:
            yield connection


def upsert(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` with ``on_conflict_do_nothing``/``on_conflict_do_update`` for the connection's
    database: the two dialects spell the same statement with different classes, and this is the
    one place that chooses between them."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def serialise_on(connection: Connection, *components: str) -> None:
    """Hold the rest of ``connection``'s transaction exclusively for the key ``components``, so a
    check and the write that depends on it cannot interleave with another process's: PostgreSQL
    takes a transaction-scoped advisory lock keyed by a hash of the components; SQLite needs
    nothing more, as every transaction holds the write lock from ``BEGIN IMMEDIATE``."""
    if connection.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(dedupe_key(*components).encode("utf-8", "surrogatepass")).digest()
    connection.execute(
        select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True)))
    )
