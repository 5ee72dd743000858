"""LOG_FORMAT=json: one JSON object per line, with the library's event fields as keys (event, fp,
user_id, reason...) and the request ID, and never a cookie."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient
from support.demo import login, make_settings, session_cookie
from support.servers import Servers, logout, new_http, signed_in

from app import logs


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logs.handler(stream, log_format="json")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_event_records_carry_their_fields_and_the_request_id(
    make_client: Callable[..., Awaitable[TestClient]], db_url: str, user: tuple[str, str], json_log: io.StringIO
) -> None:
    client = await make_client(make_settings(db_url))
    await login(client, *user)
    cookie = session_cookie(client)
    device = session_cookie(client, "device")
    assert (await client.get("/", headers={"X-Request-ID": "req-42"})).status == 200
    response = await client.post("/logout", headers={"X-Request-ID": "req-43", "Origin": str(client.make_url(""))})
    assert response.status in (200, 303)

    logged = entries(json_log)
    events = {entry["event"]: entry for entry in logged if "event" in entry}
    created = events["session.created"]
    assert created["logger"] == "aiohttp_session_postgres"
    assert created["level"] == "INFO"
    assert isinstance(created["fp"], str)
    assert len(created["fp"]) == 8
    assert isinstance(created["user_id"], int)
    assert created["message"] == f"event=session.created fp={created['fp']} user_id={created['user_id']}"
    assert isinstance(created["request_id"], str)
    assert isinstance(created["time"], str)
    assert str(created["time"]).endswith("Z")
    ended = events["session.ended"]
    assert (ended["fp"], ended["request_id"]) == (created["fp"], "req-43")
    text = json_log.getvalue()
    for secret in (cookie, device, cookie.split(".")[0] if cookie else None):
        assert secret
        assert secret not in text


def test_every_record_is_one_json_line_whatever_it_holds(json_log: io.StringIO) -> None:
    log = logging.getLogger("app.test")
    log.info("a path with a line break\r\nINFO forged: line \x1b[2J", extra={"fp": "00112233", "user_id": None})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = json_log.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "a path with a line break\r\nINFO forged: line \x1b[2J"
    assert (first["fp"], first["user_id"]) == ("00112233", None)
    assert "request_id" not in first  # logged outside a request
    assert "ValueError: boom" in second["exception"]


async def test_serve_writes_json_lines(servers: Servers, db_url: str, user: tuple[str, str]) -> None:
    server = await servers.start(db_url, LOG_FORMAT="json", LOG_LEVEL="INFO")
    async with new_http() as http:
        cookie = await signed_in(http, server.url, *user)
        await logout(http, server.url, cookie)
    server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line a JSON object
    assert {"session.created", "session.ended"} <= {entry.get("event") for entry in parsed}
    assert cookie not in server.log()


def test_a_record_with_text_that_is_not_utf8_is_written_escaped(json_log: io.StringIO) -> None:
    # aiohttp hands a header's non-UTF-8 bytes over as lone surrogates (a User-Agent of b"\xff"
    # in the access log): the line is written, escaped, not dropped with a traceback on stderr.
    logging.getLogger("aiohttp.access").info('"GET / HTTP/1.1" 200 "%s"', "curl\udcff", extra={"agent": "x\udcfe"})
    [entry] = entries(json_log)
    assert entry["message"] == '"GET / HTTP/1.1" 200 "curl\\udcff"'
    assert entry["agent"] == "x\\udcfe"
