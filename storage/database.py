"""Creating SQLAlchemy engines and applying migrations."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
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
# Owner-only: conversations are personal data.
DATA_DIR_MODE = 0o700
DATA_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
# How long `erase_deleted` keeps retrying a checkpoint that readers hold up.
CHECKPOINT_PATIENCE_SECONDS = 10.0
CHECKPOINT_TRY_MS = 200

log = logging.getLogger(__name__)


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
            prepare_sqlite_file(Path(database))
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


def prepare_sqlite_file(path: Path) -> None:
    """Create the database's folder (0700) and file (0600) owner-only before SQLite opens it, so
    the -wal and -shm files SQLite creates next to it get the same mode; tighten files an older
    version left readable to others, and warn about a folder that is."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(folder, DATA_DIR_MODE)  # mkdir's mode is cut by the umask, never widened
    elif stat.S_IMODE(folder.stat().st_mode) & 0o077:
        log.warning(
            "the data folder %s can be read by other users (mode %o): consider chmod 700",
            folder,
            stat.S_IMODE(folder.stat().st_mode),
        )
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, DATA_FILE_MODE))
    for candidate in (path, *(path.with_name(path.name + side) for side in SQLITE_SIDE_FILES)):
        _owner_only(candidate)


def _owner_only(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077 == 0:
        return
    try:
        os.chmod(path, mode & ~0o077 & 0o777 | DATA_FILE_MODE)
    except OSError as exc:
        log.warning("%s can be read by other users (mode %o) and chmod failed: %s", path, mode, exc)
    else:
        log.warning("%s could be read by other users (mode %o): now owner-only (600)", path, mode)


def erase_deleted(engine: Engine, *, patience_seconds: float = CHECKPOINT_PATIENCE_SECONDS) -> bool:
    """After a deletion (``solarbot forget``): make the deleted rows unreadable in the files.

    SQLite: every connection runs with ``secure_delete`` (freed cells and pages are zeroed), so
    the database file no longer holds them; the write-ahead log still holds older copies of the
    changed pages until a checkpoint, so checkpoint and truncate it (``TRUNCATE`` waits for
    readers; while the service keeps a read open this retries for a while). Returns False when
    the log could not be emptied (the old copies then stay until the next full checkpoint).

    PostgreSQL: deleted rows are invisible at once but their bytes stay in the table files until
    VACUUM reclaims the space (and in WAL segments and backups until those are recycled): VACUUM
    the tables ``forget`` deletes from, so the space is reclaimed now rather than at autovacuum.
    """
    if engine.dialect.name == "sqlite":
        deadline = time.monotonic() + patience_seconds
        raw = engine.raw_connection()
        cursor = raw.cursor()
        try:
            # Short waits, so the service's writers get in between tries: a TRUNCATE checkpoint
            # holds the write lock while it waits for readers.
            cursor.execute(f"PRAGMA busy_timeout={CHECKPOINT_TRY_MS}")
            while True:
                # The raw connection: a checkpoint cannot run inside our BEGIN IMMEDIATE.
                busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy == 0:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(CHECKPOINT_TRY_MS / 1000)
        finally:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()
            raw.close()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(
                "VACUUM feedback, jobs, message_attachments, messages, conversations"
            )
    return True


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted rows are overwritten with zeros, not just unlinked (see erase_deleted).
        cursor.execute("PRAGMA secure_delete=ON")
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
