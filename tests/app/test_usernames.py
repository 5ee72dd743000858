"""Usernames (app/usernames.py): one normalisation (RFC 8265, UsernameCaseMapped) for storing,
logging in and throttling, computed in Python whatever the database's locale; look-alikes (UTS
#39 skeletons) refused at `user add` and answered as unknown names at login; accounts from before
the rules that collide keep working, and `user collisions` lists them.

The databases here are made with an explicit locale (from template0): `C.UTF-8`, whose lower()
folds `İ` to `i` (glibc), and `C`, whose lower() folds ASCII only. Each premise about the
database's lower() is asserted, so the tests show the locale no longer matters.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import add_user, app_env, make_settings, run_app_command
from support.paths import REPO_ROOT
from support.postgres import admin, database_url, new_database_name, wait_for_lock_waiters

from app import schema, usernames, users
from app.appkeys import HASHER, STORAGE
from app.passwords import hash_once

LOGIN_FAILED = "/public/login.html?error=1"
CYRILLIC_A = "\u0430"
NFD_EMILE = "e\u0301mile"


@pytest.fixture(scope="module")
def database_in(server_url: str) -> Iterator[Callable[..., Awaitable[str]]]:
    """`await database_in(locale, migrate=True)`: a new database with that LC_COLLATE/LC_CTYPE
    (from template0), migrated to head unless told not to; dropped at the end."""
    made: list[str] = []

    async def create(locale: str, *, migrate: bool = True) -> str:
        name = new_database_name()
        await admin(
            server_url, f"CREATE DATABASE \"{name}\" TEMPLATE template0 LC_COLLATE '{locale}' LC_CTYPE '{locale}'"
        )
        made.append(name)
        url = database_url(server_url, name)
        if migrate:
            await asyncio.to_thread(schema.upgrade, url)
        return url

    yield create
    for name in made:
        asyncio.run(admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def lower_in(url: str, text: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT lower($1)", text)
    finally:
        await conn.close()


async def attempt(client: TestClient, username: str, password: str) -> tuple[int, str | None, int]:
    """A login: (status, Location, scrypt derivations it cost)."""
    hasher = client.app[HASHER]
    before = sum(hasher.derivations.values())
    response = await client.post("/login", data={"username": username, "password": password}, allow_redirects=False)
    await response.read()
    return response.status, response.headers.get("Location"), sum(hasher.derivations.values()) - before


async def create_user(client: TestClient, username: str, password: str) -> None:
    """As `user add` does (the app's own function), in the client's app."""
    created, _ = await users.set_password(client.app[STORAGE], username, await hash_once(password, 4))
    assert created


# -- the throttle is no oracle -------------------------------------------------------------


async def test_a_lookalike_is_throttled_the_same_whether_or_not_the_user_exists(
    database_in: Callable[..., Awaitable[str]], make_client: Callable[..., Awaitable[TestClient]]
) -> None:
    """Five wrong passwords for `alice` from one address, then the look-alikes: each answers as
    it would if no `alice` existed (before: `alİce` answered 429 when she existed, because the
    database's lower() took it for her, and 303 when not)."""
    lookalikes = ["alİce", "ALİCE", f"{CYRILLIC_A}lice"]
    answers = {}
    for alice_exists in (True, False):
        url = await database_in("C.UTF-8")
        assert await lower_in(url, "alİce") == "alice"  # the premise: this locale folds İ to i
        client = await make_client(make_settings(url))
        if alice_exists:
            await create_user(client, "alice", "alice's password")
        seen = [await attempt(client, "alice", f"wrong {i}") for i in range(5)]
        seen += [await attempt(client, name, "wrong") for name in lookalikes]
        answers[alice_exists] = seen
        await client.close()
    assert answers[True] == answers[False]
    assert answers[True] == [(303, LOGIN_FAILED, 1)] * 8


# -- a look-alike signs nobody in ----------------------------------------------------------


async def test_a_lookalike_with_the_users_password_answers_as_an_unknown_name(
    database_in: Callable[..., Awaitable[str]], make_client: Callable[..., Awaitable[TestClient]]
) -> None:
    url = await database_in("C.UTF-8")
    client = await make_client(make_settings(url))
    password = secrets.token_urlsafe(12)
    await create_user(client, "alice", password)
    unknown = await attempt(client, "nobody", password)
    assert unknown == (303, LOGIN_FAILED, 1)  # one derivation, against the dummy hash
    for lookalike in ("alİce", "ALİCE", f"{CYRILLIC_A}lice", "al\u0131ce"):  # a dotless i too
        assert await attempt(client, lookalike, password) == unknown, lookalike
    # Every spelling of her key is hers: case, full-width forms, NFD/NFC.
    for spelling in ("alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45"):
        client.session.cookie_jar.clear()
        assert await attempt(client, spelling, password) == (303, "/", 1), spelling


async def test_the_nfd_spelling_of_a_name_is_the_same_user(
    db_url: str, make_client: Callable[..., Awaitable[TestClient]]
) -> None:
    client = await make_client(make_settings(db_url))
    await create_user(client, "émile", "émile's password")
    assert (await attempt(client, NFD_EMILE, "émile's password"))[:2] == (303, "/")
    created, stored = await users.set_password(client.app[STORAGE], NFD_EMILE, await hash_once("new", 4))
    assert (created, stored) == (False, "émile")


# -- user add on a database with the C locale ----------------------------------------------


async def user_add(url: str, name: str) -> tuple[int, str, str]:
    return await run_app_command("user", "add", name, database_url=url, stdin=b"a password\n")


async def test_user_add_on_a_c_locale_database_makes_no_second_user_of_a_spelling_or_lookalike(
    database_in: Callable[..., Awaitable[str]],
) -> None:
    url = await database_in("C")
    assert await lower_in(url, "ÉMILE") == "Émile"  # the premise: this locale folds ASCII only
    for name in ("alice", "émile", "åsa"):
        status, out, err = await user_add(url, name)
        assert (status, out.strip()) == (0, f"created user {name}"), err
    # Other spellings of the same names: a password reset of that user, never a second user.
    for name, stored in (("ÉMILE", "émile"), (NFD_EMILE, "émile"), ("ÅSA", "åsa"), ("\u212bSA", "åsa")):
        status, out, err = await user_add(url, name)
        assert (status, out.strip()) == (0, f"reset the password of {stored} and ended their sessions"), (name, err)
    # Look-alikes of an existing name: refused, naming it.
    for name in ("alİce", f"{CYRILLIC_A}lice", "ALİCE"):
        status, out, err = await user_add(url, name)
        assert (status, out) == (1, ""), name
        assert err.startswith("error: invalid username "), err
        assert "looks like the existing user 'alice'" in err
        assert err.count("\n") == 1
    conn = await asyncpg.connect(url)
    try:
        assert {r["username"] for r in await conn.fetch("SELECT username FROM users")} == {"alice", "émile", "åsa"}
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("alice ", "spaces: U+0020 SPACE at character 6"),
        (" alice", "spaces: U+0020 SPACE at character 1"),
        ("ali\u00a0ce", "spaces: U+00A0 NO-BREAK SPACE at character 4"),
        ("ali\u3164ce", "invisible or control characters: U+3164 HANGUL FILLER at character 4"),
        ("\u115falice", "invisible or control characters: U+115F HANGUL CHOSEONG FILLER at character 1"),
        ("alice\u1160", "invisible or control characters: U+1160 HANGUL JUNGSEONG FILLER at character 6"),
        ("alice\uffa0", "invisible or control characters: U+FFA0 HALFWIDTH HANGUL FILLER at character 6"),
        ("alice\u200b", "invisible or control characters: U+200B ZERO WIDTH SPACE at character 6"),
    ],
)
async def test_user_add_refuses_whitespace_and_invisible_characters_with_a_clear_message(
    db_url: str, pg: asyncpg.Connection, name: str, shown: str
) -> None:
    status, out, err = await user_add(db_url, name)
    assert (status, out) == (1, "")
    assert err == f"error: invalid username {name!r}: a username may not contain {shown}\n"
    assert await pg.fetchval("SELECT count(*) FROM users") == 0


# -- two look-alikes added at once ---------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "lookalike"),
    [("alice", f"{CYRILLIC_A}lice", True), ("bob", "BOB", False)],
)
async def test_two_user_adds_at_once_make_one_user(
    db_url: str, make_client: Callable[..., Awaitable[TestClient]], first: str, second: str, lookalike: bool
) -> None:
    """Both adds check, find nothing, and are held at their INSERT (the table locked by the
    test) until both wait there: the unique index on the skeleton decides, in the database."""
    client = await make_client(make_settings(db_url))
    storage = client.app[STORAGE]
    locker, watcher = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")  # blocks INSERT, not SELECT
        adds = [asyncio.ensure_future(users.set_password(storage, name, f"hash-{name}")) for name in (first, second)]
        # (Polled from a connection of its own: pg_stat_activity read in a transaction is a snapshot.)
        await wait_for_lock_waiters(watcher, await watcher.fetchval("SELECT current_database()"), 2)
        await lock.commit()
        results = await asyncio.gather(*adds, return_exceptions=True)
        names = [r["username"] for r in await locker.fetch("SELECT username FROM users")]
    finally:
        await locker.close()
        await watcher.close()
    assert len(names) == 1
    refused = [r for r in results if isinstance(r, BaseException)]
    if lookalike:
        assert len(refused) == 1, results
        assert isinstance(refused[0], users.LookAlike), results
    else:  # the same name: the one that lost is a reset of the one that won
        assert sorted(r[0] for r in results if not isinstance(r, BaseException)) == [False, True], results


# -- accounts from before the rules --------------------------------------------------------


def alembic(url: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT, env=app_env(DATABASE_URL=url), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


LEGACY = {  # name: password; all accepted before 0007 on a C-locale database
    "émile": "p-emile",
    "ÉMILE": "p-EMILE",  # the same key as émile (lower() under C left É alone)
    "alice": "p-alice",
    f"{CYRILLIC_A}lice": "p-cyrillic",  # looks like alice
    "bob\u00a0": "p-bob",  # NBSP: refused by the rules
    "carol ": "p-carol",  # a trailing space: refused by the rules
    "dave": "p-dave",
}


async def test_accounts_that_collide_under_the_rules_keep_working_and_are_listed(
    database_in: Callable[..., Awaitable[str]], make_client: Callable[..., Awaitable[TestClient]]
) -> None:
    url = await database_in("C", migrate=False)
    await asyncio.to_thread(alembic, url, "upgrade", "0006")
    conn = await asyncpg.connect(url)
    try:
        for name, password in LEGACY.items():
            await add_user(conn, name, password, legacy=True)
        await asyncio.to_thread(alembic, url, "upgrade", "head")  # never fails on them
        client = await make_client(make_settings(url))
        for name, password in LEGACY.items():
            client.session.cookie_jar.clear()
            assert await attempt(client, name, password) == (303, "/", 1), name
            page = await (await client.get("/")).text()
            assert f"Hello {name}" in page or f"Hello {name.strip()}" in page, name
        client.session.cookie_jar.clear()
        # The first of a group still signs in by any spelling of its key; a later one, exactly.
        assert (await attempt(client, "Émile", "p-emile"))[:2] == (303, "/")
        assert (await attempt(client, "Émile", "p-EMILE"))[:2] == (303, LOGIN_FAILED)

        status, out, err = await run_app_command("user", "collisions", database_url=url)
        assert status == 0, err
        lines = out.splitlines()
        assert lines == [
            "ÉMILE ('\\xc9MILE')\tid 2\tthe same name as émile (id 1)\tsigns in only spelled exactly as stored",
            "\u0430lice ('\\u0430lice')\tid 4\tlooks like alice (id 3)\tsigns in as before",
            "bob\\xa0 ('bob\\xa0')\tid 5\trefused by the username rules: a username may not contain spaces:"
            " U+00A0 NO-BREAK SPACE at character 4\tsigns in only spelled exactly as stored",
            "carol \tid 6\trefused by the username rules: a username may not contain spaces:"
            " U+0020 SPACE at character 6\tsigns in only spelled exactly as stored",
        ]
        # The operator's tools reach each account by its exact spelling: deleting ÉMILE leaves émile.
        status, _, err = await run_app_command("user", "delete", "ÉMILE", database_url=url)
        assert status == 0, err
        assert await conn.fetchval("SELECT count(*) FROM users WHERE username IN ('émile', 'ÉMILE')") == 1
        assert await conn.fetchval("SELECT username FROM users WHERE id = 1") == "émile"
    finally:
        await conn.close()


async def test_a_row_without_a_key_signs_in_by_its_exact_spelling_and_is_listed(
    db_url: str, pg: asyncpg.Connection, make_client: Callable[..., Awaitable[TestClient]]
) -> None:
    """What an offline (--sql) migration leaves: rows with no key. Nothing breaks; they are listed."""
    await add_user(pg, "Frank", "p-frank", legacy=True)
    client = await make_client(make_settings(db_url))
    assert await attempt(client, "Frank", "p-frank") == (303, "/", 1)
    client.session.cookie_jar.clear()
    assert await attempt(client, "frank", "p-frank") == (303, LOGIN_FAILED, 1)
    status, out, err = await run_app_command("user", "collisions", database_url=db_url)
    assert status == 0, err
    assert out == (
        "Frank\tid 1\thas no key (migration 0007 ran offline, or the row was written without the app)"
        "\tsigns in only spelled exactly as stored\n"
    )


async def test_collisions_says_so_when_there_are_none(db_url: str, pg: asyncpg.Connection) -> None:
    await add_user(pg, "alice", "pw")
    status, out, err = await run_app_command("user", "collisions", database_url=db_url)
    assert (status, out, err) == (0, "", "no accounts collide under the username rules\n")


# -- the normalisation itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Alice", "alice"),
        ("\uff21\uff4c\uff49\uff43\uff45", "alice"),  # full-width: mapped to its narrow form
        (NFD_EMILE, "émile"),  # NFC
        ("\u212bSA", "åsa"),  # ANGSTROM SIGN: NFC makes it Å
        ("ΣΑΣ", "σας"),  # Unicode toLowerCase, final sigma included (RFC 8265 3.4.1)
        ("ß", "ß"),  # lower-cased, not case-folded
    ],
)
def test_key_follows_rfc_8265_username_case_mapped(name: str, key: str) -> None:
    assert usernames.key(name) == key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("alice", f"{CYRILLIC_A}lice"),
        ("paypal", "\u0440\u0430\u0443\u0440\u0430l"),  # all but the l Cyrillic
        ("alice", "ali\u0307ce"),  # UTS #39 5.4: a dot above on i hides in its dot
        ("alice", "al\u0131ce"),  # dotless i
        ("rn", "m"),
        ("ll", "l1"),
    ],
)
def test_lookalikes_share_a_skeleton(a: str, b: str) -> None:
    assert usernames.key(a) != usernames.key(b)
    assert usernames.skeleton(usernames.key(a)) == usernames.skeleton(usernames.key(b))


@pytest.mark.parametrize(("a", "b"), [("alice", "alicia"), ("ß", "ss"), ("åsa", "asa"), ("ali\u0323ce", "alice")])
def test_different_names_have_different_skeletons(a: str, b: str) -> None:
    assert usernames.skeleton(usernames.key(a)) != usernames.skeleton(usernames.key(b))


def test_the_confusables_data_is_unicode_17() -> None:
    assert usernames.confusables_version() == "17.0.0"


async def test_login_with_names_no_user_can_have_costs_the_same_and_never_500s(
    client: TestClient, user: tuple[str, str]
) -> None:
    for name in ("a\x00b", "x" * 300, "bob\u00a0", "\u115f", "alice\u200b"):
        assert await attempt(client, name, user[1]) == (303, LOGIN_FAILED, 1), name
