"""Sessions changed or ended in handlers that do not return a plain web.Response: a
StreamResponse, a WebSocketResponse, a FileResponse (aio-libs/aiohttp-session#373, #640, where
aiohttp-session's own middleware silently saves nothing). On a small app of the test's own,
set up with `aiohttp_session_postgres.setup`, through real aiohttp clients and a real
PostgreSQL: each change reaches the row, and the cookie whenever the headers had not gone out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import aiohttp_session
import aiohttp_session_postgres
import asyncpg
import pytest
from aiohttp import DummyCookieJar, WSMsgType, web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import (
    PostgresStorage,
    SessionNotSent,
    get_session,
    new_session,
    renew_session,
    save_session,
)
from aiohttp_session_postgres.tokens import id_hash_of
from support.keys import AUTH_KEY, ENC_KEY
from support.library_app import with_cookie
from support.postgres import database_name, eventually, lock_waiters

USER = 7


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, tmp_path: Path
) -> TestClient:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=1.0)
    app = web.Application()
    aiohttp_session_postgres.setup(app, storage)
    page = tmp_path / "page.txt"
    page.write_text("a file\n")
    routes = web.RouteTableDef()

    @routes.post("/start")
    async def start(request: web.Request) -> web.Response:
        (await new_session(request))["user_id"] = USER
        return web.Response(text="started")

    @routes.get("/read")
    async def read(request: web.Request) -> web.Response:
        return web.json_response(dict(await get_session(request)))

    @routes.post("/write")
    async def write(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.Response(text="written")

    async def streamed(request: web.Request) -> web.StreamResponse:
        # Its end (write_eof) is left to aiohttp, after the middleware: a client that has the
        # whole body knows the handler's changes were saved.
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"streamed\n")
        return response

    @routes.get("/stream/logout")
    async def stream_logout(request: web.Request) -> web.StreamResponse:
        (await get_session(request)).invalidate()
        return await streamed(request)

    @routes.get("/stream/logout-late")
    async def stream_logout_late(request: web.Request) -> web.StreamResponse:
        session = await get_session(request)
        response = await streamed(request)
        session.invalidate()  # the body has gone out: the row is deleted, no cookie can follow
        return response

    @routes.get("/stream/write")
    async def stream_write(request: web.Request) -> web.StreamResponse:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return await streamed(request)

    @routes.get("/stream/write-before-and-after")
    async def stream_write_before_and_after(request: web.Request) -> web.StreamResponse:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        response = await streamed(request)
        session["late"] = True
        return response

    @routes.get("/stream/start")
    async def stream_start(request: web.Request) -> web.StreamResponse:
        (await new_session(request))["user_id"] = USER
        return await streamed(request)

    @routes.get("/stream/renew")
    async def stream_renew(request: web.Request) -> web.StreamResponse:
        (await renew_session(request))["renewed"] = True
        return await streamed(request)

    @routes.get("/stream/start-late")
    async def stream_start_late(request: web.Request) -> web.StreamResponse:
        response = await streamed(request)
        (await new_session(request))["user_id"] = USER
        return response

    @routes.get("/file/logout")
    async def file_logout(request: web.Request) -> web.FileResponse:
        (await get_session(request)).invalidate()
        return web.FileResponse(page)

    @routes.get("/file/write")
    async def file_write(request: web.Request) -> web.FileResponse:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.FileResponse(page)

    @routes.get("/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        """Runs each text message as a command on the session, answering "done <command>"."""
        if "logout-first" in request.query:
            (await get_session(request)).invalidate()
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type is not WSMsgType.TEXT:
                break
            session = await get_session(request)
            if message.data == "logout":
                session.invalidate()
            elif message.data == "write":
                session["count"] = session.get("count", 0) + 1
            elif message.data == "start":
                (await new_session(request))["user_id"] = USER
            elif message.data == "save":
                try:
                    await save_session(request)
                except SessionNotSent as exc:
                    await socket.send_str(f"refused {exc.handler}")
                    continue
            await socket.send_str(f"done {message.data}")
        return socket

    app.add_routes(routes)
    return await aiohttp_client(app, cookie_jar=DummyCookieJar())


async def started(client: TestClient) -> str:
    response = await client.post("/start")
    assert response.status == 200
    return response.cookies["session"].value


async def data_of(client: TestClient, cookie: str) -> dict[str, object]:
    response = await client.get("/read", headers=with_cookie(cookie))
    assert response.status == 200
    assert "session" not in response.cookies  # a read never touches the cookie
    return await response.json()


async def version_of(conn: asyncpg.Connection, cookie: str) -> int | None:
    """The row's version (bumped by each save), or None when there is no live row."""
    version: int | None = await conn.fetchval(
        "SELECT version FROM sessions WHERE id_hash = $1 AND replaced_at IS NULL", id_hash_of(cookie.split(".")[0])
    )
    return version


async def closed_and_saved(conn: asyncpg.Connection, cookie: str, version: int | None) -> None:
    """Wait until the row's version is `version`: a websocket's handler (and so the save after
    it) ends just after the client saw the socket close."""

    async def saved() -> bool:
        return await version_of(conn, cookie) == version

    await eventually(saved, 5, f"the row's version never became {version}")


def expired(response: aiohttp.ClientResponse) -> bool:
    morsel = response.cookies.get("session")
    return morsel is not None and morsel.value == "" and morsel["max-age"] == "0"


async def commands(client: TestClient, cookie: str, *sent: str, query: str = "") -> list[str]:
    """Open /ws with `cookie`, send each command, and the answers; the socket is closed after."""
    answers = []
    async with client.ws_connect("/ws" + query, headers=with_cookie(cookie)) as socket:
        for command in sent:
            await socket.send_str(command)
            answers.append((await socket.receive(timeout=10)).data)
    return answers


# -- logouts: the session is dead for every later request ----------------------------------------


async def test_a_logout_in_a_stream_handler_ends_the_session_and_expires_its_cookie(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    response = await client.get("/stream/logout", headers=with_cookie(cookie))
    assert response.status == 200
    assert await response.text() == "streamed\n"
    assert expired(response)  # changed before prepare(): the expiry went out with the headers
    assert await version_of(lib_pg, cookie) is None
    assert await data_of(client, cookie) == {}


async def test_a_logout_after_a_stream_began_still_ends_the_session(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    response = await client.get("/stream/logout-late", headers=with_cookie(cookie))
    assert response.status == 200
    assert await response.text() == "streamed\n"
    assert "session" not in response.cookies  # too late for the headers: the browser keeps a dead cookie
    assert await version_of(lib_pg, cookie) is None
    assert await data_of(client, cookie) == {}


async def test_a_logout_in_a_file_handler_ends_the_session_and_expires_its_cookie(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    response = await client.get("/file/logout", headers=with_cookie(cookie))
    assert response.status == 200
    assert await response.text() == "a file\n"
    assert expired(response)
    assert await version_of(lib_pg, cookie) is None
    assert await data_of(client, cookie) == {}


async def test_a_logout_over_a_websocket_ends_the_session(client: TestClient, lib_pg: asyncpg.Connection) -> None:
    cookie = await started(client)
    assert await commands(client, cookie, "logout") == ["done logout"]
    await closed_and_saved(lib_pg, cookie, None)  # saved when the handler returned
    assert await data_of(client, cookie) == {}


async def test_save_session_ends_a_session_while_its_websocket_stays_open(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    async with client.ws_connect("/ws", headers=with_cookie(cookie)) as socket:
        for command in ("logout", "save"):
            await socket.send_str(command)
            assert (await socket.receive(timeout=10)).data == f"done {command}"
        # The socket is still open: the session is dead for every other request already.
        assert await version_of(lib_pg, cookie) is None
        assert await data_of(client, cookie) == {}
        await socket.send_str("write")  # a change of the ended session does not bring it back
        assert (await socket.receive(timeout=10)).data == "done write"
    await closed_and_saved(lib_pg, cookie, None)
    assert await data_of(client, cookie) == {}


async def test_a_logout_before_the_websockets_handshake_expires_the_cookie_in_it(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    async with client.ws_connect("/ws?logout-first", headers=with_cookie(cookie)) as socket:
        handshake = socket._response
        assert handshake.status == 101
        assert expired(handshake)
        assert await version_of(lib_pg, cookie) is None
    assert await data_of(client, cookie) == {}


# -- changes: the row, and the cookie while the headers have not gone out -------------------------


async def test_a_write_before_a_stream_is_prepared_is_saved_once(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    before = await version_of(lib_pg, cookie)
    assert before is not None
    response = await client.get("/stream/write", headers=with_cookie(cookie))
    assert response.status == 200
    assert await response.text() == "streamed\n"
    assert "session" not in response.cookies  # the same session: the cookie stands
    assert await data_of(client, cookie) == {"user_id": USER, "count": 1}
    # Saved at prepare(), and not again when the handler returned.
    assert await version_of(lib_pg, cookie) == before + 1


async def test_writes_before_and_after_a_stream_began_are_both_saved(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    before = await version_of(lib_pg, cookie)
    assert before is not None
    response = await client.get("/stream/write-before-and-after", headers=with_cookie(cookie))
    assert response.status == 200
    assert await response.text() == "streamed\n"
    assert await data_of(client, cookie) == {"user_id": USER, "count": 1, "late": True}
    assert await version_of(lib_pg, cookie) == before + 2  # at prepare(), then after the handler


async def test_a_login_in_a_stream_handler_sends_its_cookie_with_the_headers(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    response = await client.get("/stream/start")
    assert response.status == 200
    assert await response.text() == "streamed\n"
    cookie = response.cookies["session"].value
    assert await version_of(lib_pg, cookie) == 1
    assert await data_of(client, cookie) == {"user_id": USER}


async def test_a_renewal_in_a_stream_handler_replaces_the_cookie(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    old = await started(client)
    response = await client.get("/stream/renew", headers=with_cookie(old))
    assert response.status == 200
    assert await response.text() == "streamed\n"
    new = response.cookies["session"].value
    assert new != old
    assert await data_of(client, new) == {"user_id": USER, "renewed": True}
    assert await data_of(client, old) == {}
    assert await version_of(lib_pg, old) is None


async def test_a_write_in_a_file_handler_is_saved_once(client: TestClient, lib_pg: asyncpg.Connection) -> None:
    cookie = await started(client)
    before = await version_of(lib_pg, cookie)
    assert before is not None
    response = await client.get("/file/write", headers=with_cookie(cookie))
    assert response.status == 200
    assert await response.text() == "a file\n"
    assert await data_of(client, cookie) == {"user_id": USER, "count": 1}
    assert await version_of(lib_pg, cookie) == before + 1


async def test_writes_over_a_websocket_are_saved_while_open_and_when_it_closes(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie = await started(client)
    before = await version_of(lib_pg, cookie)
    assert before is not None
    async with client.ws_connect("/ws", headers=with_cookie(cookie)) as socket:
        handshake = socket._response
        assert "session" not in handshake.cookies
        for command in ("write", "save", "save", "write"):
            await socket.send_str(command)
            assert (await socket.receive(timeout=10)).data == f"done {command}"
        # The first write is in the row, once (a save without a change since saves nothing).
        assert await data_of(client, cookie) == {"user_id": USER, "count": 1}
        assert await version_of(lib_pg, cookie) == before + 1
    # The second when the handler returned; the cookie, the same session's, still works.
    await closed_and_saved(lib_pg, cookie, before + 2)
    assert await data_of(client, cookie) == {"user_id": USER, "count": 2}


async def test_a_login_after_the_headers_went_out_is_refused_loudly_and_saves_nothing(
    client: TestClient, lib_pg: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    cookie = await started(client)
    # Explicitly, in the handler: SessionNotSent names it.
    answers = await commands(client, cookie, "start", "save")
    assert answers[0] == "done start"
    assert answers[1].startswith("refused ")
    assert answers[1].endswith("test_streaming.client.<locals>.ws")
    # At the handler's end: the error cuts the stream short, and aiohttp logs it, naming the handler.
    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        response = await client.get("/stream/start-late", headers=with_cookie(cookie))
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert "session" not in response.cookies
    refused = [r.exc_info[1] for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], SessionNotSent)]
    assert len(refused) == 1  # the websocket's handler, told once, is not refused again at its end
    assert refused[0].handler.endswith("test_streaming.client.<locals>.stream_start_late")
    assert f"handler {refused[0].handler} created or renewed a session after" in str(refused[0])
    # Nothing created, and the session the requests came with is untouched.
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 1
    assert await data_of(client, cookie) == {"user_id": USER}


async def test_a_plain_response_is_saved_once(client: TestClient, lib_pg: asyncpg.Connection) -> None:
    cookie = await started(client)
    before = await version_of(lib_pg, cookie)
    assert before is not None
    response = await client.post("/write", headers=with_cookie(cookie))
    assert response.status == 200
    assert await data_of(client, cookie) == {"user_id": USER, "count": 1}
    assert await version_of(lib_pg, cookie) == before + 1


async def test_a_save_at_prepare_that_times_out_answers_503_and_changes_nothing(
    client: TestClient, lib_pg: asyncpg.Connection, lib_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cookie = await started(client)
    before = await version_of(lib_pg, cookie)
    async with lib_pg.transaction():
        # The row locked past the storage's database_timeout: the save in prepare() gives up.
        await lib_pg.execute(
            "SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", id_hash_of(cookie.split(".")[0])
        )
        with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
            response = await client.get("/stream/write", headers=with_cookie(cookie))
            assert response.status == 503  # DatabaseUnavailable, raised through the handler
            assert response.headers["Retry-After"] == "2"
            assert "streamed" not in await response.text()
        # The abandoned UPDATE is cancelled in the database too (asynchronously): wait for that
        # before letting go of the lock (asked from outside this transaction, whose view is a snapshot).
        observer = await asyncpg.connect(lib_url)
        try:
            await eventually(
                lambda: _no_waiters(observer, database_name(lib_url)), 10, "the UPDATE still waits on the lock"
            )
        finally:
            await observer.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback
    assert await version_of(lib_pg, cookie) == before
    assert await data_of(client, cookie) == {"user_id": USER}


async def _no_waiters(conn: asyncpg.Connection, database: str) -> bool:
    return await lock_waiters(conn, database) == 0


async def test_save_session_needs_the_librarys_setup(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    with pytest.raises(TypeError, match="needs a PostgresStorage"):
        aiohttp_session_postgres.setup(web.Application(), object())  # type: ignore[arg-type]
    app = web.Application()
    aiohttp_session.setup(app, storage)  # aiohttp-session's own: it would save the session again

    async def early(request: web.Request) -> web.Response:
        (await get_session(request))["x"] = 1
        try:
            await save_session(request)
        except RuntimeError as exc:
            return web.Response(text=str(exc))
        return web.Response(text="saved")

    app.router.add_get("/", early)
    client = await aiohttp_client(app)
    response = await client.get("/")
    assert await response.text() == "save_session() needs aiohttp_session_postgres.setup(app, storage)"
