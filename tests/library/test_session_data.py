"""Session values at the storage level: anything but a JSON value is refused at assignment with a
TypeError naming the key and the problem, and the session stays as it was; `user_id` (or the
storage's user_id_key) must be an int id, a str id, or None.

That any JSON value comes back exactly after a save and a load from PostgreSQL, and that a
refused value leaves the stored session as it was, is tested through storage_harness in
tests/app/test_app_session_data.py (on the demo's migrated database).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresSession
from support.json_values import BAD_LEAVES, same
from support.storage_harness import cookies, new_cookie, open_client


def test_same_tells_json_types_apart() -> None:
    assert same({"a": [1, 2.5, None, "x", {"b": False}]}, {"a": [1, 2.5, None, "x", {"b": False}]})
    for a, b in ((1, 1.0), (1, True), (0, False), (0.0, -0.0), ([1], [1.0]), ({"a": 1}, {"a": True})):
        assert a == b
        assert not same(a, b)


# -- anything else is refused at assignment ------------------------------------------------


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


# A str is an identity too since schema version 2 (test_user_identity.py); these are not.
@pytest.mark.parametrize("value", ["", "x" * 256, "a\x00b", 1.0, True, 2**63, -(2**63) - 1, [1], {"id": 1}])
def test_user_id_must_be_an_int_or_str_id(value: Any) -> None:
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
    non-identity `account`, here a float (the key reaches every session the storage hands out)."""
    client, control = await open_client(aiohttp_client, lib_url, user_id_key="account")
    control.to_put["new"] = {"account": 5.0}
    response = await client.post("/put?ticket=new")  # a new session: refused as well
    assert response.status == 400
    response = await client.post("/start", json={"account": 5})
    assert response.status == 200
    cookie = new_cookie(response)
    control.to_put["t"] = {"account": 5.0}
    response = await client.post("/put?ticket=t", headers=cookies(cookie))
    assert response.status == 400
    assert (await response.json())["error"] == (
        "session['account'] ties the session to a user (None: to no user):"
        " it must be an int or a str user id, not float"
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
