"""Alembic environment: plain SQL migrations run through asyncpg.

The database comes from DATABASE_URL (Heroku's postgres:// form is accepted, TLS required on a
dyno), or from `config.attributes["connect_kwargs"]` when the app runs migrations itself. The
connection is made by the app's own `connect_kwargs`, so Alembic and the app connect the same
way; SQLAlchemy only carries the transaction.
"""

import asyncio
import os

import asyncpg
from aiohttp_session_postgres import UNAVAILABLE_ERRORS
from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.db import connect_kwargs, describe, reason

# Two release phases (or a release phase and a `heroku run`) must not migrate at once.
MIGRATION_LOCK_KEY = 0x5E5510_A1E8

config = context.config


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL, no database needed."""
    context.configure(dialect_name="postgresql", literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def _connect_kwargs() -> dict:
    given = config.attributes.get("connect_kwargs")
    if given:
        return given
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("error: DATABASE_URL is not set: point it at the database to migrate")
    return connect_kwargs(url, on_heroku=bool(os.environ.get("DYNO")))


async def _connect(kwargs: dict) -> asyncpg.Connection:
    """The one connection the migrations run on; a failure is one `error:` line, never a
    traceback or the URL's password (the process exits 1)."""
    try:
        return await asyncpg.connect(**kwargs, timeout=10)
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, ValueError) as exc:
        where = describe(kwargs["dsn"])
        raise SystemExit(
            f"error: cannot connect to the database at {where} ({reason(exc)}): check DATABASE_URL"
        ) from None


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_migrations_online() -> None:
    connection = await _connect(_connect_kwargs())

    async def the_connection() -> asyncpg.Connection:
        return connection

    engine = create_async_engine("postgresql+asyncpg://", async_creator=the_connection, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
