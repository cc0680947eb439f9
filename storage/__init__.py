"""Persistence: SQLAlchemy models, Alembic migrations and the repository (the only place with queries)."""

from storage.repository import Repository

__all__ = ["Repository"]
