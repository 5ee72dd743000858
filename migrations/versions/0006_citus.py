"""on a Citus coordinator: users a reference table, sessions distributed by id_hash

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

On a database without the citus extension (one PostgreSQL, Heroku Postgres) this revision does
nothing. On a Citus coordinator (`CREATE EXTENSION citus` there and on every worker, the workers
added with citus_add_node) it distributes what the earlier revisions made:
- users becomes a reference table (a copy on every node): the sessions table's foreign key to it
  (ON DELETE CASCADE) needs that, and a login reads it on any node;
- sessions is distributed by id_hash, by the library's own SQL (schema_statements(citus=True)):
  its triggers are dropped first (Citus refuses them) and every statement that names one session
  then runs on the one shard that holds it;
- login_failures stays a table of the coordinator's own: only the login reads and writes it, by
  itself.
Existing rows are copied to the shards. Run it before the app serves from the cluster: the app
finds out at start-up that the table is distributed and uses the library's Citus mode.
"""

from aiohttp_session_postgres import run_schema_statements, schema_statements
from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _citus() -> bool:
    if op.get_context().as_sql:
        return False  # offline (--sql): no database to ask
    installed = op.get_bind().execute(text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
    return bool(installed.scalar())


def upgrade() -> None:
    if not _citus():
        return
    op.execute(
        "SELECT create_reference_table('users')"
        " WHERE NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = 'users'::regclass)"
    )
    run_schema_statements(op, schema_statements(citus=True))


def downgrade() -> None:
    if _citus():
        # undistribute_table refuses users ("cannot complete operation on a table with identity
        # column"), and the sessions table's foreign key ties the two: measured on Citus 14.
        raise RuntimeError("0006 cannot be undone on Citus: Citus cannot undistribute users (an identity column)")
