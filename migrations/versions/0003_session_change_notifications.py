"""session change notifications for the in-process cache (LISTEN/NOTIFY)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Payload: the id hash in hex, then ':' and the new version for a data change; the hex alone
    # for a deletion. Touches (version unchanged) and the sweeper's deletions of already-expired
    # rows notify nothing: every cache checks deadlines itself, and a sweep of a million rows
    # must not become a million notifications.
    op.execute(
        """
        CREATE FUNCTION sessions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
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
    op.execute(
        """
        CREATE TRIGGER sessions_notify_update AFTER UPDATE ON sessions
        FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
        EXECUTE FUNCTION sessions_notify()
        """
    )
    op.execute(
        """
        CREATE TRIGGER sessions_notify_delete AFTER DELETE ON sessions
        FOR EACH ROW WHEN (OLD.idle_expires_at > now() AND OLD.absolute_expires_at > now())
        EXECUTE FUNCTION sessions_notify()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER sessions_notify_delete ON sessions")
    op.execute("DROP TRIGGER sessions_notify_update ON sessions")
    op.execute("DROP FUNCTION sessions_notify()")
