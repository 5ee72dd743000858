"""Alembic revisions of the sessions table, for another project's `alembic.ini`:

    [alembic]
    version_locations = %(here)s/migrations/versions aiohttp_session_postgres:alembic_versions
    path_separator = space

    [aiohttp_session_postgres]       ; optional: the defaults are these
    table = sessions
    schema = public

then `alembic upgrade heads` (this branch is labelled `aiohttp_session_postgres`).
"""
