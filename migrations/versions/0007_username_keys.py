"""usernames: a key (RFC 8265) and a skeleton (UTS #39) per user, computed by the app, unique

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Until 0006 a username was unique by lower(username), which follows the database's locale (under
`C`, `ÉMILE` and `émile` were two users) and differs from Python's lower() (on `İ`). From here
the app computes, in Python (app/usernames.py), each name's key (RFC 8265 UsernameCaseMapped)
and its skeleton (UTS #39), and the table holds them:
- username_key: unique; what login looks a user up by;
- username_skeleton: unique; a new name whose skeleton is taken looks like an existing one and
  is refused, atomically (of two look-alikes added at once, the index lets one in).
Existing rows are filled in here, oldest first. Accounts that collide under the new rules are
kept, never refused: the oldest of each group gets the key (and skeleton); a later one with the
same key gets neither (it signs in by its exact spelling), a later look-alike gets its key but
no skeleton, and a name the rules refuse (a trailing space, NBSP, a Hangul filler) gets neither.
`python -m app user collisions` lists them. The lower() index goes: nothing matches on it now.

Code of 0006 still serving during the release finds users by lower(username) (a scan now); its
`user add` fails (its upsert named that index): run `user add` from the new release.

Offline (`--sql`), no rows can be read, so none is filled in: those accounts then sign in by
their exact spelling only, and `user collisions` lists them as having no key. On Citus, users is
a reference table: the columns, the updates and the indexes reach every node.
"""

from alembic import op
from sqlalchemy import text

from app import usernames

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN username_key text, ADD COLUMN username_skeleton text")
    if not op.get_context().as_sql:
        _fill_in()
    op.execute("CREATE UNIQUE INDEX users_key_unique ON users (username_key)")
    op.execute("CREATE UNIQUE INDEX users_skeleton_unique ON users (username_skeleton)")
    # Accounts without a key are found by their exact spelling.
    op.execute("CREATE INDEX users_exact_username_idx ON users (username) WHERE username_key IS NULL")
    op.execute("DROP INDEX users_username_lower_key")


def _fill_in() -> None:
    bind = op.get_bind()
    keys: set[str] = set()
    skeletons: set[str] = set()
    updates = []
    for user_id, name in bind.execute(text("SELECT id, username FROM users ORDER BY id")):
        name_key = usernames.key_or_none(name)
        if name_key is None or name_key in keys:
            continue
        keys.add(name_key)
        name_skeleton = usernames.skeleton(name_key)
        if name_skeleton in skeletons:
            name_skeleton = None
        else:
            skeletons.add(name_skeleton)
        updates.append({"id": user_id, "k": name_key, "s": name_skeleton})
    if updates:
        bind.execute(text("UPDATE users SET username_key = :k, username_skeleton = :s WHERE id = :id"), updates)


def downgrade() -> None:
    # Fails (unique violation) if names that differ only in case under this database's locale
    # were added since: delete one of each first.
    op.execute("CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username))")
    op.execute("DROP INDEX users_exact_username_idx")
    op.execute("ALTER TABLE users DROP COLUMN username_key, DROP COLUMN username_skeleton")
