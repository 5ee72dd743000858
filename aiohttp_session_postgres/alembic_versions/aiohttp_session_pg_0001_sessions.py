"""aiohttp-session-postgres: the sessions table, its indexes and triggers (schema version 1)

Revision ID: aiohttp_session_pg_0001
Revises:
Create Date: 2026-11-30
"""

from aiohttp_session_postgres.alembic_versions import table_names
from aiohttp_session_postgres.schema import run_schema_statements, schema_statements
from alembic import op

revision = "aiohttp_session_pg_0001"
down_revision = None
branch_labels = ("aiohttp_session_postgres",)
depends_on = None


def upgrade() -> None:
    table, schema = table_names()
    if schema != "public":
        # The branch may run before any revision of the project's own that would make it.
        op.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    run_schema_statements(op, schema_statements(table, schema))


def downgrade() -> None:
    table, schema = table_names()
    qualified = f'"{schema}"."{table}"'
    op.execute(f"DROP TABLE {qualified}")
    op.execute(f'DROP FUNCTION "{schema}"."{table}_notify"()')
