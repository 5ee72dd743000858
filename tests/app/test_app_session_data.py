"""Session values at the storage level, on the demo's migrated database: any JSON value comes back
exactly (same types, same float signs) after a save and a load from PostgreSQL; anything else is
refused with a TypeError naming the key, and the stored session stays as it was. (The refusals
at assignment, without a database: tests/library/test_session_data.py.)

The property tests run hypothesis inside one event loop of their own (asyncio.Runner): one pool
and one test server for all examples, values handed to the handlers in-process (storage_harness's
/put and /dump), so they never pass through HTTP and keep their exact Python types.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from aiohttp_session_postgres import PostgresSession
from hypothesis import given, settings
from hypothesis import strategies as st
from support.json_values import json_values, keys, poisoned, same
from support.storage_harness import CONTROL, Control, build_app, cookies, id_hash, new_cookie, set_cookies, stored

# -- a server in a loop of our own ---------------------------------------------------------


class Harness:
    """storage_harness's app on a TestServer, plus a direct connection for reading rows."""

    def __init__(self, client: TestClient, control: Control, pg: asyncpg.Connection) -> None:
        self.client, self.control, self.pg = client, control, pg

    @classmethod
    async def open(cls, url: str) -> Harness:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=5)
        app = build_app(pool)
        client = TestClient(TestServer(app), cookie_jar=DummyCookieJar())
        await client.start_server()  # the pool closes with the app
        pg = await asyncpg.connect(url)
        await pg.execute("TRUNCATE sessions")
        return cls(client, app[CONTROL], pg)

    async def close(self) -> None:
        await self.pg.execute("TRUNCATE sessions")
        await self.pg.close()
        await self.client.close()

    async def put(self, cookie: str | None, values: dict[str, Any], *, hold: str = "") -> Any:
        ticket = uuid.uuid4().hex
        self.control.to_put[ticket] = values
        query = f"?ticket={ticket}" + (f"&hold={hold}" if hold else "")
        response = await self.client.post("/put" + query, headers=cookies(cookie))
        await response.read()
        return response, self.control.seen.pop(ticket, None)

    async def load(self, cookie: str) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        response = await self.client.get(f"/dump?ticket={ticket}", headers=cookies(cookie))
        assert response.status == 200
        return self.control.seen.pop(ticket)

    async def mutate(self, cookie: str, change: Callable[[PostgresSession], None]) -> int:
        ticket = uuid.uuid4().hex
        self.control.mutations[ticket] = change
        response = await self.client.post(f"/mutate?ticket={ticket}", headers=cookies(cookie))
        return response.status

    async def row(self, cookie: str) -> asyncpg.Record | None:
        return await self.pg.fetchrow("SELECT data, version FROM sessions WHERE id_hash = $1", id_hash(cookie))


@pytest.fixture
def run(migrated_url: str) -> Iterator[tuple[Callable[[Any], Any], Harness]]:
    """(run a coroutine in the harness's loop, the harness)."""
    with asyncio.Runner() as runner:
        harness = runner.run(Harness.open(migrated_url))
        try:
            yield runner.run, harness
        finally:
            runner.run(harness.close())


# -- JSON values come back exactly ---------------------------------------------------------


def test_json_values_come_back_exactly_through_create_and_merge(run: tuple[Callable[[Any], Any], Harness]) -> None:
    runner, h = run

    async def check(created: dict[str, Any], merged: dict[str, Any]) -> None:
        # Created: the first save of a new session (INSERT).
        response, error = await h.put(None, created)
        assert response.status == 200, error
        cookie = new_cookie(response)
        assert same(await h.load(cookie), created)

        # Merged: saved after a concurrent save of another key (UPDATE conflict, then merge).
        hold = uuid.uuid4().hex
        writer = asyncio.create_task(h.put(cookie, merged, hold=hold))
        await h.control.wait_loaded(hold)
        other, _ = await h.put(cookie, {"\x00other": 1})
        assert other.status == 200
        h.control.release(hold)
        response, error = await writer
        assert response.status == 200, error
        assert not set_cookies(response)

        expected = {**created, "\x00other": 1, **merged}
        assert same(await h.load(cookie), expected)
        at_rest = await stored(h.pg, cookie)
        assert at_rest is not None
        assert same(at_rest[0], expected)
        assert at_rest[1] == 3

    @settings(max_examples=60, deadline=None)
    @given(
        created=st.dictionaries(keys, json_values, min_size=1, max_size=4),
        merged=st.dictionaries(keys, json_values, min_size=1, max_size=4),
    )
    def round_trip(created: dict[str, Any], merged: dict[str, Any]) -> None:
        runner(check(created, merged))

    round_trip()


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1, 1.0, True, 5e-324, 1.7976931348623157e308, 2**64 - 1, -(2**63), "\x00\U0001f600", [[], {}]],
    # Plain ids: one with escapes in it cannot be named on a command line (pytest escapes it).
    ids=["0.0", "-0.0", "1", "1.0", "True", "5e-324", "float-max", "2**64-1", "-2**63", "nul-emoji", "empties"],
)
def test_edge_json_values_keep_type_and_sign(run: tuple[Callable[[Any], Any], Harness], value: Any) -> None:
    runner, h = run

    async def check() -> None:
        response, error = await h.put(None, {"v": value, "in": [value, {"x": value}]})
        assert response.status == 200, error
        assert same(await h.load(new_cookie(response)), {"v": value, "in": [value, {"x": value}]})

    runner(check())


# -- anything else is refused at assignment ------------------------------------------------


def test_non_json_values_are_refused_and_leave_the_stored_session_unchanged(
    run: tuple[Callable[[Any], Any], Harness],
) -> None:
    runner, h = run

    async def check(key: str, bad: Any) -> None:
        response, _ = await h.put(None, {"keep": [1, "x"]})
        cookie = new_cookie(response)
        before = await h.row(cookie)

        response, seen = await h.put(cookie, {key: bad})
        assert response.status == 400
        assert repr(key) in seen["message"]
        assert not seen["key_present"]
        assert not set_cookies(response)
        after = await h.row(cookie)
        assert (after["data"], after["version"]) == (before["data"], before["version"])
        assert same(await h.load(cookie), {"keep": [1, "x"]})

    @settings(max_examples=60, deadline=None)
    @given(key=keys, bad=poisoned)
    def refused(key: str, bad: Any) -> None:
        runner(check(key, bad))

    refused()


# -- in-place changes bypass the check: they fail at save, and nothing is stored -----------

IN_PLACE_BAD: dict[str, Callable[[PostgresSession], None]] = {
    "set appended": lambda s: s["cart"]["items"].append({1}),
    "nan appended": lambda s: s["cart"]["items"].append(float("nan")),
    "object in nested dict": lambda s: s["cart"].__setitem__("x", object()),
    "tuple appended": lambda s: s["cart"]["items"].append((1, 2)),
    "int key in nested dict": lambda s: s["cart"].__setitem__(7, "seven"),
    "bytes in nested list": lambda s: s["cart"]["items"].append(b"x"),
}


@pytest.mark.parametrize("change", list(IN_PLACE_BAD.values()), ids=list(IN_PLACE_BAD))
def test_non_json_value_put_in_place_fails_the_save_and_stores_nothing(
    run: tuple[Callable[[Any], Any], Harness], change: Callable[[PostgresSession], None]
) -> None:
    runner, h = run

    async def check() -> None:
        response, _ = await h.put(None, {"cart": {"items": ["apple"]}})
        cookie = new_cookie(response)
        before = await h.row(cookie)
        assert await h.mutate(cookie, change) == 500
        after = await h.row(cookie)
        assert (after["data"], after["version"]) == (before["data"], before["version"])
        assert same(await h.load(cookie), {"cart": {"items": ["apple"]}})

    runner(check())


def test_in_place_json_change_is_saved(run: tuple[Callable[[Any], Any], Harness]) -> None:
    runner, h = run

    async def check() -> None:
        response, _ = await h.put(None, {"cart": {"items": ["apple"]}})
        cookie = new_cookie(response)
        assert await h.mutate(cookie, lambda s: s["cart"]["items"].append({"pear": [2.5, None]})) == 200
        assert same(await h.load(cookie), {"cart": {"items": ["apple", {"pear": [2.5, None]}]}})
        at_rest = await stored(h.pg, cookie)
        assert at_rest is not None
        assert json.dumps(at_rest[0]) == json.dumps({"cart": {"items": ["apple", {"pear": [2.5, None]}]}})

    runner(check())
