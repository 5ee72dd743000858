"""Names for annotations only: asyncpg's connections, as the library takes them. Imported under
TYPE_CHECKING (asyncpg's own types come from asyncpg-stubs, for whoever type-checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    # A connection of its own, or one acquired from a pool (asyncpg hands out a proxy for it):
    # every function that takes a connection takes either.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    # One acquired from a pool.
    PoolConnection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
