"""Alembic revisions of the sessions table, for another project's `alembic.ini`:

    [alembic]
    version_locations = %(here)s/migrations/versions aiohttp_session_postgres:alembic_versions
    path_separator = space

    [aiohttp_session_postgres]       ; optional: the defaults are these
    table = sessions
    schema = public

then `alembic upgrade heads` (this branch is labelled `aiohttp_session_postgres`).
"""

from alembic import op
from sqlalchemy import text

SECTION = "aiohttp_session_postgres"

# What schema version 2 added; a downgrade to version 1 drops them (with principal's CHECK and index).
VERSION_2_COLUMNS = ("principal", "idle_timeout", "browser_session")


def table_names() -> tuple[str, str]:
    """The table and its schema, from the `[aiohttp_session_postgres]` section of alembic.ini
    when it has one."""
    config = op.get_context().config
    if config is None or not config.file_config.has_section(SECTION):
        return "sessions", "public"
    return (
        config.get_section_option(SECTION, "table", "sessions") or "sessions",
        config.get_section_option(SECTION, "schema", "public") or "public",
    )


def citus_installed() -> bool:
    """Whether the database has the citus extension; False offline (``--sql``: no database to
    ask; print the Citus schema with ``python -m aiohttp_session_postgres schema --citus``)."""
    if op.get_context().as_sql:
        return False
    installed = op.get_bind().execute(text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
    return bool(installed.scalar())
