"""The database: engine factory, Core tables, Alembic migrations and the ``tollway db`` commands."""
