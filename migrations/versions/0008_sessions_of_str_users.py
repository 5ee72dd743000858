"""sessions: the library's schema version 2 (str users; each session's own lifetime), without downtime

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Runs the library's schema_statements() again (on Citus with citus=True), as 0004 said a
library release that changes the table would. The demo's users keep their integer ids, in
user_id, and the foreign key to users (ON DELETE CASCADE) stays as 0001 made it: deleting a
user still ends their sessions. What version 2 adds (nullable columns without
a default: `principal text`, `idle_timeout integer`, `browser_session boolean`; principal's CHECK
added NOT VALID, its index built CONCURRENTLY in an autocommit block of its own) rewrites nothing and
holds no lock longer than a catalog change, so the release before this one keeps serving from
the table during the release phase, and this one reads every row it wrote. The index's
autocommit block commits the revisions before it first (their part is then done, whatever
follows).

On Citus the column, the CHECK and the index reach every shard (Citus propagates them).
"""

from aiohttp_session_postgres import run_schema_statements, schema_statements
from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _citus() -> bool:
    if op.get_context().as_sql:
        return False  # offline (--sql): no database to ask
    installed = op.get_bind().execute(text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
    return bool(installed.scalar())


def upgrade() -> None:
    # An ALTER that waits for a lock queues every request behind it: give up instead.
    op.execute("SET LOCAL lock_timeout = '5s'")
    run_schema_statements(op, schema_statements(citus=_citus()))


def downgrade() -> None:
    # The demo's users have integer ids, so no session has a principal; were one there, version 1
    # could not end it (as the library's own revision 0003 does).
    op.execute("DELETE FROM sessions WHERE principal IS NOT NULL")
    # Version 2's columns (principal's CHECK and index go with it).
    op.execute(
        "ALTER TABLE sessions DROP COLUMN IF EXISTS principal, DROP COLUMN IF EXISTS idle_timeout,"
        " DROP COLUMN IF EXISTS browser_session"
    )
    op.execute("COMMENT ON TABLE sessions IS 'aiohttp-session-postgres schema 1'")
