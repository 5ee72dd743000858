"""The database schema's revision: what the code expects (Alembic's head) and what the database has."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from .db import connect_kwargs

ROOT = Path(__file__).resolve().parent.parent


class SchemaOutOfDate(Exception):
    pass


def alembic_config(url: str | None = None, *, on_heroku: bool = False) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    if url is not None:
        # Passed as an object, not through set_main_option: ConfigParser would mangle a '%' in it.
        config.attributes["connect_kwargs"] = connect_kwargs(url, on_heroku=on_heroku)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(url: str, *, on_heroku: bool = False) -> None:
    """`alembic upgrade head` on `url`. Runs its own event loop: call it outside one."""
    command.upgrade(alembic_config(url, on_heroku=on_heroku), "head")


async def current_revision(conn: asyncpg.Connection) -> str | None:
    if not await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
        return None
    return await conn.fetchval("SELECT version_num FROM alembic_version")


async def check(conn: asyncpg.Connection) -> None:
    """Raise SchemaOutOfDate unless the database is at the code's latest revision."""
    expected, actual = head_revision(), await current_revision(conn)
    if actual != expected:
        found = f"at revision {actual}" if actual else "not migrated"
        raise SchemaOutOfDate(f"the database schema is {found}, the code needs {expected}: run `alembic upgrade head`")
