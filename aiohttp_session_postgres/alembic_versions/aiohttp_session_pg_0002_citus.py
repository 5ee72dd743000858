"""aiohttp-session-postgres: on a Citus coordinator, the sessions table distributed by id_hash

Revision ID: aiohttp_session_pg_0002
Revises: aiohttp_session_pg_0001
Create Date: 2026-12-07

Where the citus extension is installed (run `alembic upgrade heads` against the coordinator),
the table is distributed by id_hash and its triggers dropped, by the library's own SQL
(schema_statements(citus=True)); then give the storage citus=True. Elsewhere nothing changes.
A table with a foreign key to one of the project's tables needs that table distributed or made a
reference table first (Citus refuses the key otherwise): a revision of the project's own, which
this one can depend on.
"""

from aiohttp_session_postgres.schema import run_schema_statements, schema_statements
from alembic import op
from sqlalchemy import text

revision = "aiohttp_session_pg_0002"
down_revision = "aiohttp_session_pg_0001"
branch_labels = None
depends_on = None

SECTION = "aiohttp_session_postgres"


def _names() -> tuple[str, str]:
    """table and schema from the `[aiohttp_session_postgres]` section of alembic.ini, if any."""
    config = op.get_context().config
    if config is None or not config.file_config.has_section(SECTION):
        return "sessions", "public"
    return (
        config.get_section_option(SECTION, "table", "sessions") or "sessions",
        config.get_section_option(SECTION, "schema", "public") or "public",
    )


def _citus() -> bool:
    if op.get_context().as_sql:
        return False  # offline (--sql): no database to ask; `python -m aiohttp_session_postgres schema --citus`
    installed = op.get_bind().execute(text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
    return bool(installed.scalar())


def upgrade() -> None:
    if not _citus():
        return
    table, schema = _names()
    run_schema_statements(op, schema_statements(table, schema, citus=True))


def downgrade() -> None:
    if not _citus():
        return
    table, schema = _names()
    op.execute(f'SELECT undistribute_table(\'"{schema}"."{table}"\')')
    run_schema_statements(op, schema_statements(table, schema))
