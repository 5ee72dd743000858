"""The database schema's revision: what the code expects and what the database has; and running
the migrations (Alembic, imported only then: a serving process never loads it).

HEAD_REVISION is the newest revision in migrations/versions, written here so that a serving
process need not import Alembic and SQLAlchemy to learn it (25 MB of memory, measured);
tests/app/test_migrations.py holds it equal to Alembic's own head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from .db import connect_kwargs

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
HEAD_REVISION = "0008"


class SchemaOutOfDate(Exception):
    pass


def alembic_config(url: str | None = None, *, on_heroku: bool = False) -> Config:
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    if url is not None:
        # Passed as an object, not through set_main_option: ConfigParser would mangle a '%' in it.
        config.attributes["connect_kwargs"] = connect_kwargs(url, on_heroku=on_heroku)
    return config


def alembic_head() -> str:
    """The newest revision as Alembic reads migrations/versions (what HEAD_REVISION must say)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(url: str, *, on_heroku: bool = False) -> None:
    """`alembic upgrade head` on `url`. Runs its own event loop: call it outside one."""
    from alembic import command

    command.upgrade(alembic_config(url, on_heroku=on_heroku), "head")


async def current_revision(conn: asyncpg.Connection) -> str | None:
    if not await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
        return None
    revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return revision


async def check(conn: asyncpg.Connection) -> None:
    """Raise SchemaOutOfDate unless the database is at the code's latest revision."""
    actual = await current_revision(conn)
    if actual != HEAD_REVISION:
        found = f"at revision {actual}" if actual else "not migrated"
        raise SchemaOutOfDate(
            f"the database schema is {found}, the code needs {HEAD_REVISION}: run `alembic upgrade head`"
            " (from a checkout: `python3 dev.py alembic upgrade head`)"
        )


async def distributed(conn: asyncpg.Connection) -> bool:
    """Whether the sessions table is distributed by Citus (this is a Citus coordinator)."""
    if not await conn.fetchval("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"):
        return False  # (and pg_dist_partition does not exist)
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_dist_partition"
            " WHERE logicalrelid = 'sessions'::regclass AND partmethod = 'h')"
        )
    )
