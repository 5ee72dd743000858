"""login throttling: a failure may belong to a device (a browser holding a device cookie)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Backward compatible with 0004's code, which keeps inserting rows without a device while a
release rolls out. From 0005 a row is written before the password is checked and deleted when it
proves right, so the table holds failures and attempts still being checked.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE login_failures ADD COLUMN device text")
    op.execute("CREATE INDEX login_failures_device_idx ON login_failures (device, failed_at) WHERE device IS NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE login_failures DROP COLUMN device")
