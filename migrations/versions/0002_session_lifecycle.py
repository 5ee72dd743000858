"""session lifecycle: version for optimistic concurrency, client details, login throttling

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Backward compatible with 0001's code (old dynos keep serving during the release phase):
    # only new columns with defaults and a new table.
    op.execute(
        """
        ALTER TABLE sessions
            ADD COLUMN version bigint NOT NULL DEFAULT 1,
            ADD COLUMN client_ip text NOT NULL DEFAULT '',
            ADD COLUMN user_agent text NOT NULL DEFAULT ''
        """
    )
    # One row per failed, well-formed login attempt; the sweeper drops rows older than the window.
    op.execute(
        """
        CREATE TABLE login_failures (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            username_key text NOT NULL,
            client_ip text NOT NULL,
            failed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX login_failures_username_idx ON login_failures (username_key, failed_at)")
    op.execute("CREATE INDEX login_failures_ip_idx ON login_failures (client_ip, failed_at)")
    op.execute("CREATE INDEX login_failures_failed_at_idx ON login_failures (failed_at)")


def downgrade() -> None:
    op.execute("DROP TABLE login_failures")
    op.execute("ALTER TABLE sessions DROP COLUMN version, DROP COLUMN client_ip, DROP COLUMN user_agent")
