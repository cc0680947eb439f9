"""Creating SQLAlchemy engines and applying migrations."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from bot.errors import ConfigError, StorageError

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_db_engine(url: str) -> Engine:
    """An engine for ``url`` with our SQLite pragmas; PostgreSQL needs nothing but the URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("SOLARBOT_DATABASE_URL: not a valid database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            hide_parameters=True,
        )
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True
        )
    raise ConfigError(
        f"SOLARBOT_DATABASE_URL: unsupported database {backend!r} (use sqlite or postgresql)"
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: two processes can then never both read a job as free and
        # both claim it, and a read->write upgrade can never fail with SQLITE_BUSY mid-transaction.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


# pg_advisory_lock key held while migrating: several processes starting at once on one PostgreSQL
# database take turns instead of racing to create the same tables (SQLite serialises by itself).
MIGRATION_LOCK_KEY = 0x50_1A_B0_7


def upgrade(engine: Engine, *, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Safe to call on every start, from many processes."""
    try:
        with contextlib.ExitStack() as stack:
            if engine.dialect.name == "postgresql":
                lock = stack.enter_context(engine.connect())
                lock.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
                stack.callback(
                    lock.exec_driver_sql, f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"
                )
            command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise StorageError(f"database migration failed: {_safe(exc)}") from None


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate down to ``revision`` (``"base"`` drops every table)."""
    try:
        command.downgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise StorageError(f"database migration failed: {_safe(exc)}") from None


def head_revision() -> str:
    """The newest migration shipped with this version of solarbot."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _safe(exc: BaseException) -> str:
    """An error message without the URL (and so without a password)."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return text
