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

from aiohttp_session_postgres.alembic_versions import citus_installed, table_names
from aiohttp_session_postgres.schema import run_schema_statements, schema_statements
from alembic import op

revision = "aiohttp_session_pg_0002"
down_revision = "aiohttp_session_pg_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not citus_installed():
        return
    table, schema = table_names()
    run_schema_statements(op, schema_statements(table, schema, citus=True))


def downgrade() -> None:
    if not citus_installed():
        return
    table, schema = table_names()
    op.execute(f'SELECT undistribute_table(\'"{schema}"."{table}"\')')
    run_schema_statements(op, schema_statements(table, schema))
