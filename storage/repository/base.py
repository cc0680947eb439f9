"""What every part of the repository shares: the engine, one transaction per public method, and
the one place that picks the SQLite or PostgreSQL flavour of ``INSERT … ON CONFLICT``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite


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
