"""users and sessions

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            username text NOT NULL CHECK (char_length(username) BETWEEN 1 AND 64),
            password_hash text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Unique without regard to case; also the index login looks users up by.
    op.execute("CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username))")
    # A logged (ordinary) table: an UNLOGGED one would be emptied by a crash, logging everyone out.
    op.execute(
        """
        CREATE TABLE sessions (
            id_hash bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
            user_id bigint REFERENCES users (id) ON DELETE CASCADE,
            data bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            idle_expires_at timestamptz NOT NULL,
            absolute_expires_at timestamptz NOT NULL,
            CHECK (idle_expires_at <= absolute_expires_at)
        )
        """
    )
    # The sweeper's scan (expired first); idle <= absolute, so this one deadline decides expiry.
    op.execute("CREATE INDEX sessions_idle_expires_at_idx ON sessions (idle_expires_at)")
    # ON DELETE CASCADE from users, and listing a user's sessions.
    op.execute("CREATE INDEX sessions_user_id_idx ON sessions (user_id) WHERE user_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP TABLE sessions")
    op.execute("DROP TABLE users")
