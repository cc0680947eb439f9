"""A real database that refuses writes, for the tests of what happens then (nothing of ours is
patched): a trigger, created through the repository's own engine, aborts every insert into one
table, as a database that is down, full or broken would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import text

from storage.repository import Repository

REFUSAL = "the database refuses writes"


@contextlib.contextmanager
def refusing_inserts(repository: Repository, table: str) -> Iterator[None]:
    """Every INSERT into ``table`` fails (SQLite or PostgreSQL) until the block ends."""
    trigger = f"refuse_{table}"
    if repository.dialect == "postgresql":
        create = [
            "CREATE OR REPLACE FUNCTION solarbot_test_refuse() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION solarbot_test_refuse()",
        ]
        drop = [f"DROP TRIGGER {trigger} ON {table}", "DROP FUNCTION solarbot_test_refuse()"]
    else:
        create = [
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
        ]
        drop = [f"DROP TRIGGER {trigger}"]
    with repository.engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with repository.engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))
