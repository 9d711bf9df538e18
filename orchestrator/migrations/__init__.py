"""Alembic migrations for the orchestrator schema."""
