"""The rows layer alone (rows.py, sql.py), against a real PostgreSQL and without aiohttp: each
table operation's typed outcome, the memos that spare statements, and the statements' named
parameters, which keep one meaning (one PostgreSQL type) in every statement."""

from __future__ import annotations

import ast
import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.memo import BoundedMap
from aiohttp_session_postgres.pool import Unavailable
from aiohttp_session_postgres.rows import Client, Created, Gone, NotCreated, NotSaved, Row, SessionRows
from aiohttp_session_postgres.schema import TableNames
from aiohttp_session_postgres.sql import Statement, Statements
from aiohttp_session_postgres.tokens import handle_of

KEY = b"k" * 32
CLIENT = Client("192.0.2.1", "test agent")
PACKAGE = Path(__file__).resolve().parents[2] / "aiohttp_session_postgres"


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


def rows_on(pool: asyncpg.Pool, *, key: bytes = KEY, **options: Any) -> SessionRows:
    settings: dict[str, Any] = {
        "names": TableNames(),
        "idle_timeout": 1800.0,
        "absolute_timeout": 43200.0,
        "touch_interval": 60.0,
        "database_timeout": 2.0,
        "max_sessions_per_user": None,
        "durable_writes": True,
        **options,
    }
    return SessionRows(pool, DataCipher((key,)), **settings)


def data(**values: object) -> bytes:
    return orjson.dumps(values)


async def created(rows: SessionRows, *, user_id: int | None = None, replaces: bytes | None = None) -> bytes:
    id_hash = os.urandom(32)
    outcome = await rows.create(id_hash, data(n=1), user_id=user_id, replaces=replaces, client=CLIENT)
    assert isinstance(outcome, Created), outcome
    return id_hash


def never_called() -> Client:
    raise AssertionError("the client details were asked for")


async def test_a_created_session_loads_with_its_data_and_the_database_deadlines(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    rows = rows_on(pool)
    id_hash = os.urandom(32)
    outcome = await rows.create(id_hash, data(cart=[1, 2]), user_id=7, replaces=None, client=CLIENT)
    assert isinstance(outcome, Created)
    assert outcome.ended == ()
    stored = await lib_pg.fetchrow(
        "SELECT user_id, client_ip, user_agent, extract(epoch FROM absolute_expires_at - created_at) AS life,"
        " extract(epoch FROM idle_expires_at - created_at) AS idle, extract(epoch FROM created_at) AS created"
        " FROM sessions WHERE id_hash = $1",
        id_hash,
    )
    assert (stored["user_id"], stored["client_ip"], stored["user_agent"]) == (7, *CLIENT)
    assert (stored["life"], stored["idle"]) == (43200, 1800)
    assert outcome.row.created == round(stored["created"])  # ::bigint rounds
    loaded = await rows.load(id_hash, never_called)  # touched at creation: no touch, no client
    assert isinstance(loaded, Row)
    assert orjson.loads(loaded.plaintext) == {"cart": [1, 2]}
    assert (loaded.version, loaded.created, loaded.current_key) == (1, outcome.row.created, True)
    assert loaded.absolute_deadline == outcome.row.absolute_deadline


async def test_a_load_touches_past_the_touch_interval_and_notes_the_client(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    rows = rows_on(pool, touch_interval=0.0)
    id_hash = await created(rows)
    await lib_pg.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '5 minutes', idle_expires_at = now() + interval '1 minute'"
    )
    loaded = await rows.load(id_hash, lambda: Client("198.51.100.9", "later agent"))
    assert isinstance(loaded, Row)
    stored = await lib_pg.fetchrow(
        "SELECT client_ip, user_agent, extract(epoch FROM idle_expires_at - last_seen_at) AS idle,"
        " extract(epoch FROM last_seen_at) AS seen FROM sessions"
    )
    assert (stored["client_ip"], stored["user_agent"], stored["idle"]) == ("198.51.100.9", "later agent", 1800)
    assert loaded.touched_at == pytest.approx(float(stored["seen"]))


async def test_an_unknown_session_is_looked_up_once_then_known_dead(pool: asyncpg.Pool) -> None:
    rows = rows_on(pool)
    unknown = os.urandom(32)
    assert await rows.load(unknown, lambda: CLIENT) is Gone.EXPIRED_OR_UNKNOWN
    assert await rows.load(unknown, never_called) is Gone.KNOWN_DEAD


async def test_data_no_key_opens_is_undecryptable(pool: asyncpg.Pool) -> None:
    id_hash = await created(rows_on(pool, key=b"o" * 32))
    assert await rows_on(pool).load(id_hash, lambda: CLIENT) is Gone.UNDECRYPTABLE


async def test_a_row_sealed_under_an_older_key_loads_as_not_current(pool: asyncpg.Pool) -> None:
    old = b"o" * 32
    id_hash = await created(rows_on(pool, key=old))
    rotated = SessionRows(
        pool,
        DataCipher((KEY, old)),
        names=TableNames(),
        idle_timeout=1800.0,
        absolute_timeout=43200.0,
        touch_interval=60.0,
        database_timeout=2.0,
        max_sessions_per_user=None,
        durable_writes=True,
    )
    loaded = await rotated.load(id_hash, lambda: CLIENT)
    assert isinstance(loaded, Row)
    assert loaded.current_key is False


async def test_a_login_uses_up_the_session_it_came_with_once(pool: asyncpg.Pool, lib_pg: asyncpg.Connection) -> None:
    rows = rows_on(pool)
    before = await created(rows)
    after = await created(rows, user_id=1, replaces=before)
    assert await lib_pg.fetchval(
        "SELECT data = '' AND replaced_at IS NOT NULL FROM sessions WHERE id_hash = $1", before
    )
    assert await rows_on(pool).load(before, lambda: CLIENT) is Gone.EXPIRED_OR_UNKNOWN
    again = await rows.create(os.urandom(32), data(), user_id=1, replaces=before, client=CLIENT)
    assert again is NotCreated.REPLACED_OR_ENDED
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions WHERE replaced_at IS NULL") == 1
    assert isinstance(await rows.load(after, lambda: CLIENT), Row)


async def test_a_check_that_says_no_creates_nothing_and_undoes_what_it_did(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    rows = rows_on(pool)
    before = await created(rows)

    async def check(conn: Any) -> bool:
        await conn.execute("CREATE TABLE check_was_here ()")
        return False

    outcome = await rows.create(os.urandom(32), data(), user_id=1, replaces=before, client=CLIENT, check=check)
    assert outcome is NotCreated.PRECONDITION
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 1  # the old one, untouched
    assert await lib_pg.fetchval("SELECT replaced_at FROM sessions") is None
    assert await lib_pg.fetchval("SELECT to_regclass('check_was_here')") is None


async def test_a_save_at_the_loaded_version_writes_and_a_stale_one_rebases(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    rows = rows_on(pool)
    id_hash = await created(rows, user_id=3)
    first = await rows.save(id_hash, data(a=1), user_id=3, version=1, durable=True, rebase=_no_rebase)
    assert isinstance(first, Row)
    assert first.version == 2
    seen: list[bytes] = []

    def rebase(latest: bytes) -> tuple[bytes, int | None]:
        seen.append(latest)
        return data(**orjson.loads(latest), b=2), 4

    merged = await rows.save(id_hash, data(b=2), user_id=3, version=1, durable=True, rebase=rebase)
    assert seen == [data(a=1)]
    assert isinstance(merged, Row)
    assert merged.version == 3
    assert orjson.loads(merged.plaintext) == {"a": 1, "b": 2}
    assert await lib_pg.fetchval("SELECT user_id FROM sessions") == 4


async def test_a_save_of_an_ended_session_writes_nothing(pool: asyncpg.Pool, lib_pg: asyncpg.Connection) -> None:
    rows = rows_on(pool)
    id_hash = await created(rows)
    assert await rows.end(id_hash) is True
    assert await rows.end(id_hash) is False
    saved = await rows.save(id_hash, data(a=1), user_id=None, version=1, durable=True, rebase=_no_rebase)
    assert saved is NotSaved.ENDED
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 0


async def test_a_merge_over_data_under_an_unknown_key_leaves_it(pool: asyncpg.Pool, lib_pg: asyncpg.Connection) -> None:
    id_hash = await created(rows_on(pool))
    await rows_on(pool, key=b"n" * 32).save(
        id_hash, data(new=1), user_id=None, version=1, durable=True, rebase=_no_rebase
    )
    sealed = await lib_pg.fetchval("SELECT data FROM sessions")
    saved = await rows_on(pool).save(id_hash, data(a=1), user_id=None, version=1, durable=True, rebase=_no_rebase)
    assert saved is NotSaved.UNKNOWN_KEY
    assert await lib_pg.fetchval("SELECT data FROM sessions") == sealed


async def test_a_renewal_keeps_creation_and_absolute_deadline_under_a_new_id(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    rows = rows_on(pool)
    old = await created(rows, user_id=5)
    await lib_pg.execute("UPDATE sessions SET created_at = created_at - interval '1 hour'")
    original = await lib_pg.fetchrow("SELECT created_at, absolute_expires_at FROM sessions")
    fresh = os.urandom(32)
    renewed = await rows.renew(fresh, data(r=1), user_id=5, replaces=old, client=CLIENT)
    assert isinstance(renewed, Created)
    row = await lib_pg.fetchrow("SELECT created_at, absolute_expires_at FROM sessions WHERE id_hash = $1", fresh)
    assert (row["created_at"], row["absolute_expires_at"]) == (original["created_at"], original["absolute_expires_at"])
    assert renewed.row.created == round(original["created_at"].timestamp())  # ::bigint rounds
    again = await rows.renew(os.urandom(32), data(), user_id=5, replaces=old, client=CLIENT)
    assert again is NotCreated.REPLACED_OR_ENDED


async def test_the_cap_ends_the_least_recently_used_and_says_which(pool: asyncpg.Pool) -> None:
    rows = rows_on(pool, max_sessions_per_user=2)
    oldest = await created(rows, user_id=9)
    await created(rows, user_id=9)
    await created(rows, user_id=10)  # another user's: never counted
    third = await rows.create(os.urandom(32), data(), user_id=9, replaces=None, client=CLIENT)
    assert isinstance(third, Created)
    assert third.ended == (oldest,)
    assert len(await rows.list_user(9, limit=10)) == 2
    assert len(await rows.list_user(10, limit=10)) == 1


async def test_a_users_sessions_are_listed_and_ended_by_handle_all_or_all_but_one(pool: asyncpg.Pool) -> None:
    rows = rows_on(pool)
    mine = [await created(rows, user_id=1) for _ in range(3)]
    theirs = await created(rows, user_id=2)
    listed = await rows.list_user(1, limit=10)
    assert {info.handle for info in listed} == {handle_of(h) for h in mine}
    assert await rows.end_by_handle(1, handle_of(theirs)) == ()  # another user's handle
    assert await rows.end_by_handle(1, "not a handle") == ()
    assert await rows.end_by_handle(1, handle_of(mine[0])) == (mine[0],)
    assert await rows.end_user(1, keep=mine[1]) == (mine[2],)
    assert set(await rows.end_user(1)) == {mine[1]}
    assert await rows.list_user(2, limit=10) != []


async def test_an_operation_past_the_deadline_raises_unavailable(pool: asyncpg.Pool) -> None:
    rows = rows_on(pool, database_timeout=0.3)
    with pytest.raises(Unavailable):
        async with rows.connection() as conn:
            await conn.execute("SELECT pg_sleep(2)")
    await asyncio.sleep(0)
    assert await rows.load(os.urandom(32), lambda: CLIENT) is Gone.EXPIRED_OR_UNKNOWN  # and it recovers


async def test_each_parameter_name_has_one_type_in_every_statement(pool: asyncpg.Pool) -> None:
    """A named parameter means one thing everywhere: PostgreSQL infers one type for it in every
    statement that takes it."""
    types: dict[str, set[str]] = {}
    async with pool.acquire() as conn:
        for fast in (True, False):
            statements = Statements(TableNames().qualified, durable_writes=fast)
            for statement in vars(statements).values():
                prepared = await conn.prepare(statement.sql)
                for name, parameter in zip(statement.names, prepared.get_parameters(), strict=True):
                    types.setdefault(name, set()).add(parameter.name)
    assert {name: kinds for name, kinds in types.items() if len(kinds) > 1} == {}
    assert types["id_hash"] == {"bytea"}
    assert types["user_id"] == {"int8"}


def test_a_statement_takes_exactly_its_named_parameters() -> None:
    statement = Statement("SELECT $a::int + $b::int + $a::int FROM {table}", table="t")
    assert statement.sql == "SELECT $1::int + $2::int + $1::int FROM t"
    assert statement.args(b=2, a=1) == (1, 2)
    with pytest.raises(TypeError, match="b"):
        statement.args(a=1)
    with pytest.raises(TypeError, match="missing parameter b"):
        statement.args(a=1, c=3)


def test_a_bounded_map_drops_its_oldest_insertion_when_full() -> None:
    memo: BoundedMap[str, int] = BoundedMap(2)
    memo["a"], memo["b"] = 1, 2
    memo["a"] = 3  # already there: nothing dropped, and still the oldest insertion
    memo["c"] = 4
    assert list(memo.items()) == [("b", 2), ("c", 4)]
    with pytest.raises(ValueError, match="at least 1"):
        BoundedMap(0)


def test_the_rows_layer_imports_nothing_of_aiohttp() -> None:
    """rows.py and every module of the package it imports, transitively: none imports aiohttp."""
    seen, todo = set(), ["rows"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                # `from .x import y` reaches x; `from . import x, y` reaches x and y.
                todo.extend([node.module] if node.module else [a.name for a in node.names])
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(name.split(".")[0].startswith("aiohttp") for name in names), (module, names)
    assert {"rows", "sql", "pool", "cipher", "memo"} <= seen


def _no_rebase(latest: bytes) -> tuple[bytes, int | None]:
    raise AssertionError("no merge expected")
