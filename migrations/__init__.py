"""Tollway's Alembic migrations (a package so an installed Tollway can ship and run them)."""
