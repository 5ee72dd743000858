"""aiohttp sessions kept server-side in PostgreSQL; the cookie carries only a signed opaque ID.

Reuse in another app: `aiohttp_session.setup(app, app.storage.PostgresStorage(pool, ...))`.
"""
