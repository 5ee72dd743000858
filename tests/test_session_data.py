"""Session values at the storage level: any JSON value comes back exactly (same types, same
float signs) after a save and a load from PostgreSQL; anything else is refused with a TypeError
naming the key, and the stored session stays as it was.

The property tests run hypothesis inside one event loop of their own (asyncio.Runner): one pool
and one test server for all examples, values handed to the handlers in-process (storage_harness's
/put and /dump), so they never pass through HTTP and keep their exact Python types.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp_session_postgres import PostgresSession
from hypothesis import given, settings
from hypothesis import strategies as st
from support.storage_harness import (
    CONTROL,
    Control,
    build_app,
    cookies,
    id_hash,
    new_cookie,
    open_client,
    set_cookies,
    stored,
)

# -- strategies ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)
# "user_id" is reserved (it ties a session to a users row: int or None), tested on its own below.
keys = st.text(max_size=20).filter(lambda key: key != "user_id")

BAD_LEAVES: dict[str, Any] = {
    "set": {1, 2},
    "empty set": set(),
    "frozenset": frozenset({"a"}),
    "tuple": (1, 2),
    "empty tuple": (),
    "bytes": b"x",
    "bytearray": bytearray(b"x"),
    "object": object(),
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "dict with int key": {1: "a"},
    "dict with None key": {None: "a"},
    "dict with tuple key": {(1, 2): "a"},
    "Decimal": Decimal("1.5"),
    "datetime": datetime(2026, 1, 1),
    "complex": 1j,
    "nested list containing a set": [1, [2, {3}]],
    "integer above 64 bits": 2**64,
    "integer below 64 bits": -(2**63) - 1,
    "lone surrogate": "\ud800",
    "dict key with a lone surrogate": {"\udfff": 1},
}


def _in_list(items: list[Any], bad: Any, at: int) -> list[Any]:
    items = list(items)
    items.insert(at % (len(items) + 1), bad)
    return items


def _in_dict(items: dict[str, Any], key: str, bad: Any) -> dict[str, Any]:
    return {**items, key: bad}


# A value with at least one non-JSON part somewhere inside.
poisoned = st.recursive(
    st.sampled_from(list(BAD_LEAVES.values())) | st.builds(object),
    lambda inner: (
        st.builds(_in_list, st.lists(json_values, max_size=3), inner, st.integers(0, 3))
        | st.builds(_in_dict, st.dictionaries(st.text(), json_values, max_size=3), st.text(), inner)
    ),
    max_leaves=6,
)


def same(a: Any, b: Any) -> bool:
    """Equal with the same JSON types throughout: 1, 1.0 and True differ, and so do 0.0 and -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def test_same_tells_json_types_apart() -> None:
    assert same({"a": [1, 2.5, None, "x", {"b": False}]}, {"a": [1, 2.5, None, "x", {"b": False}]})
    for a, b in ((1, 1.0), (1, True), (0, False), (0.0, -0.0), ([1], [1.0]), ({"a": 1}, {"a": True})):
        assert a == b
        assert not same(a, b)


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


@pytest.mark.parametrize("bad", list(BAD_LEAVES.values()), ids=list(BAD_LEAVES))
def test_pg_session_refuses_non_json_value_naming_the_key(bad: Any) -> None:
    loaded = PostgresSession(id_hash=b"\x01" * 32, data={"a": [1]}, snapshot={"a": [1]}, created=0, version=4)
    for session in (PostgresSession(), loaded):
        before = dict(session)
        with pytest.raises(TypeError, match=re.escape(repr("the key"))):
            session["the key"] = bad
        with pytest.raises(TypeError, match=re.escape(repr("a"))):
            session["a"] = [bad]
        assert dict(session) == before
        assert not session._changed, "the middleware would save it"


@pytest.mark.parametrize("key", [1, None, b"k", ("a",)], ids=["int", "None", "bytes", "tuple"])
def test_pg_session_refuses_non_str_keys(key: Any) -> None:
    session = PostgresSession()
    with pytest.raises(TypeError, match="keys must be str"):
        session[key] = 1
    assert session.empty
    assert not session._changed


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


@pytest.mark.parametrize("value", ["7", 1.0, True, 2**63, -(2**63) - 1, [1], {"id": 1}])
def test_user_id_must_be_an_int_id(value: Any) -> None:
    session = PostgresSession()
    with pytest.raises(TypeError, match="user_id"):
        session["user_id"] = value
    assert "user_id" not in session
    # Any PostgreSQL bigint (the user_id column's type), negative ones included.
    for user_id in (42, -1000, -(2**63), 2**63 - 1, None):
        session["user_id"] = user_id
        assert session["user_id"] == user_id


async def test_a_loaded_session_checks_the_storage_user_id_key(
    aiohttp_client: Callable[..., Awaitable[TestClient]], lib_url: str
) -> None:
    """With user_id_key="account", a new session and one loaded from the database both refuse a
    non-int `account` (the key reaches every session the storage hands out)."""
    client, control = await open_client(aiohttp_client, lib_url, user_id_key="account")
    control.to_put["new"] = {"account": "five"}
    response = await client.post("/put?ticket=new")  # a new session: refused as well
    assert response.status == 400
    response = await client.post("/start", json={"account": 5})
    assert response.status == 200
    cookie = new_cookie(response)
    control.to_put["t"] = {"account": "five"}
    response = await client.post("/put?ticket=t", headers=cookies(cookie))
    assert response.status == 400
    assert (await response.json())["error"] == (
        "session['account'] ties the session to a users row: it must be an int id or None"
    )


def test_require_guards_only_the_creation_of_a_session() -> None:
    async def check(conn: object) -> bool:
        return True

    saved = PostgresSession(id_hash=b"\x01" * 32, data={})
    with pytest.raises(RuntimeError, match=r"^require\(\) guards the creation of a new session; this one exists$"):
        saved.require(check, otherwise=web.HTTPForbidden())
    assert saved.precondition is None


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("\ud800", "a string with unpaired surrogates is not valid UTF-8"),
        ([{"\udfff": 1}], "a dict key with unpaired surrogates is not valid UTF-8"),
        ({"a": {1: "x"}}, "dict keys must be str, got int"),
        (2**64, "18446744073709551616 is outside the 64-bit integer range"),
        ([float("nan")], "nan is not a JSON number"),
        ({1, 2}, "set is not a JSON value (use str, int, float, bool, None, list, dict)"),
    ],
    ids=["lone-surrogate", "surrogate-key", "int-key", "int-range", "nan", "set"],
)
def test_the_error_names_the_key_and_the_problem(bad: Any, problem: str) -> None:
    session = PostgresSession()
    with pytest.raises(TypeError) as raised:
        session["s"] = bad
    assert str(raised.value) == f"session['s']: {problem}"


def test_a_key_that_is_not_a_str_is_named_in_the_error() -> None:
    session = PostgresSession()
    with pytest.raises(TypeError) as raised:
        session[1] = "x"  # type: ignore[index]
    assert str(raised.value) == "session keys must be str (valid UTF-8), got int 1"


def test_values_nested_too_deep_or_containing_themselves_are_refused_at_assignment() -> None:
    from aiohttp_session_postgres.session import MAX_DEPTH

    session = PostgresSession()
    deep: list[object] = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(TypeError, match="nested 64 deep at most"):
        session["deep"] = deep
    within: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        within = [within]
    session["within"] = within  # as deep as allowed: kept
    deep_dicts: dict[str, object] = {}
    for _ in range(MAX_DEPTH):
        deep_dicts = {"d": deep_dicts}
    with pytest.raises(TypeError, match="nested 64 deep at most"):
        session["deep_dicts"] = deep_dicts
    session["within_dicts"] = deep_dicts["d"]  # one level less: kept
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        session["loop"] = loop
    assert "deep" not in session
    assert "loop" not in session
