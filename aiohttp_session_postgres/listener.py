"""The LISTEN connection's keep-alive loop, shared by the session cache (cache.py) and the
lifecycle hooks (hooks.py): each says only what to do when the connection is up or lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import asyncpg

# Seconds before the first reconnection, doubled after each failure up to MAX_BACKOFF.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 5.0


async def listen(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    channels: Mapping[str, Callable[[str], None]],
    *,
    up: Callable[[], None],
    down: Callable[[Exception], None],
    closed: Callable[[], None] | None = None,
    check_every: float = 2.0,
) -> None:
    """Keep a connection that LISTENs on `channels` until cancelled, reconnecting
    with backoff (0.5 s, doubling to 5 s; back to 0.5 s once a connection was up). A connection
    the server closes is noticed, and replaced, at once; one that died silently (no FIN or RST)
    within `check_every` seconds: every half of that it is asked ``SELECT 1`` and given the other
    half to answer. Cancel to stop; the connection is then terminated and the cancellation
    re-raised, without a call to `down`.

    :param connect: opens a new connection (not one of a pool's: LISTEN stays on it).
    :param channels: each channel to listen on, in order, with what takes its payloads.
    :param up: called once a new connection listens on every channel.
    :param down: called with the exception each time a connection cannot be made, cannot
        listen, fails its check or otherwise ends the loop (any `Exception`: asyncpg can close a
        connection on a protocol error without calling its termination listeners, then raise
        anything); the loop then waits its backoff and reconnects.
    :param closed: called from asyncpg's termination listener as soon as the connection closes
        (including the loop's own terminate after a failure or a cancellation). When given, a
        close the loop notices between checks is not reported to `down`: the connection is
        replaced without it. When None, such a close reaches `down` as
        ``ConnectionError("listener connection closed")``.
    :param check_every: seconds within which a silently dead connection is noticed.
    :raises asyncio.CancelledError: when cancelled; nothing else (it runs until cancelled).
    """
    backoff = FIRST_BACKOFF
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect()
            gone = asyncio.Event()  # so a closed connection is replaced at once, not at the next check
            conn.add_termination_listener(partial(_terminated, gone, closed))
            for channel, take in channels.items():
                await conn.add_listener(channel, partial(_payload_to, take))
            up()
            backoff = FIRST_BACKOFF
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), check_every / 2)
                if gone.is_set():
                    if closed is None:
                        raise ConnectionError("listener connection closed")
                    break  # `closed` was told already
                await conn.execute("SELECT 1", timeout=check_every / 2)
        except Exception as exc:  # not CancelledError (a BaseException), which goes on up
            down(exc)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


def _terminated(gone: asyncio.Event, closed: Callable[[], None] | None, _conn: object) -> None:
    if closed is not None:
        closed()
    gone.set()


def _payload_to(take: Callable[[str], None], _conn: object, _pid: int, _channel: str, payload: str) -> None:
    take(payload)
