"""sessions table managed by the aiohttp_session_postgres library

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The sessions table was this app's own (0001-0003). From here its layout is the library's:
this revision runs the library's schema SQL, which is idempotent, keeps every row, and here
replaces the notification function and triggers (the channel becomes "public.sessions" and a
TRUNCATE now notifies too). The foreign key to users (ON DELETE CASCADE), which the library
does not know about, stays as 0001 made it: deleting a user still ends their sessions.

A later release of the library that changes the table comes with a new revision here that runs
its schema_statements() again.
"""

from aiohttp_session_postgres import run_schema_statements, schema_statements
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_schema_statements(op, schema_statements())


def downgrade() -> None:
    # Back to 0003's notifications: its channel, no TRUNCATE trigger, no version comment.
    op.execute("DROP TRIGGER sessions_notify_truncate ON sessions")
    op.execute("COMMENT ON TABLE sessions IS NULL")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION sessions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('session_events', encode(OLD.id_hash, 'hex'));
            ELSE
                PERFORM pg_notify('session_events', encode(NEW.id_hash, 'hex') || ':' || NEW.version);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
