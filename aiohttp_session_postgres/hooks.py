"""Session lifecycle hooks: async callbacks an app subscribes to, in aiohttp's Signal style::

    @storage.on_event.append
    async def on_session_event(event: SessionEvent) -> None:
        if event.name == "revoked" and event.user_id is not None:
            await close_websockets_of(event.user_id)

Events (`SessionEvent.name`), and which processes' hooks receive them:

- ``created``: a new session saved (a login, a first write). The process that saved it.
- ``renewed``: a session given a new ID (`renew_session`); `previous` is the old one's
  fingerprint. The process that saved it.
- ``ended``: the request's own session ended by its request (a logout: ``invalidate()``),
  reason ``logout``. The process that handled the request.
- ``revoked``: sessions ended by anything but their own request: ``end_session``,
  ``end_other_sessions``, ``end_all_sessions`` (reason: the method's name, or what the caller
  passed as `reason`), and the per-user cap (reason ``max_sessions_per_user``). The process
  that revoked (``local=True``, at once) **and every process running the storage's listener**
  (``local=False``, once the revoking transaction commits: milliseconds), whichever process or
  program revoked (another worker, the CLI, a cron job using the library).
- ``expired``: a request came with a session that is no longer live (expired, ended, swept),
  reason ``found_at_load``, once per session per process. The process that loaded it. The user
  id is not known (the row is gone or no longer read).
- ``swept``: the sweeper deleted `count` expired rows in one pass (one event per pass, not per
  row: a pass may delete a million rows, and a row past its deadline has had no request served
  since; track a live connection's deadline with ``session.expires``). The process that swept.

An event carries the session's fingerprint (as logged: the first 4 bytes of its ID hash in
hex), the user id, a reason: never a token, a cookie or session data.

Delivery: hooks run in a task of their own, after the event, never inside the request that
caused it: a slow hook cannot hold a response, and one that raises cannot break it. Each call
is bounded by the storage's `hook_timeout` (then cancelled, and logged); an exception is logged
with its type, not its message (which may quote data). Hooks of one event run in the order
appended, one after the other. At most `MAX_PENDING` events wait for their hooks at once; past
that, events are dropped (and counted in a log line). Delivery is at most once: a process that
dies with events pending loses them; a listener that was disconnected misses what was sent
meanwhile (its reconnection is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import orjson
from aiosignal import Signal

from . import listener

log = logging.getLogger("aiohttp_session_postgres")

# Events whose hooks have not finished, per storage, at most; past it new events are dropped.
MAX_PENDING = 1000
# Seconds between two log lines about dropped events.
DROP_REPORT_INTERVAL = 60.0
# A payload's longest user id, in characters, beyond which it is sent as unknown (NOTIFY
# carries at most 8000 bytes).
MAX_USER_ID_CHARS = 1000
MAX_REASON_CHARS = 100

EVENT_NAMES = frozenset({"created", "renewed", "ended", "revoked", "expired", "swept"})
# The events other processes are told of, over the events channel.
REMOTE_EVENTS = frozenset({"revoked"})
_PAYLOAD_VERSION = 1


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One session lifecycle event, as the hooks receive it.

    :param name: ``created``, ``renewed``, ``ended``, ``revoked``, ``expired`` or ``swept``
        (the module's docstring says when each is sent, and to which processes).
    :param fingerprint: the session's fingerprint, as the log lines show it (8 hex digits), or
        "-" for an event of no one session (``swept``).
    :param user_id: the session's user id (its `user_id_key` value), or None when it has none or
        it is not known (``expired``).
    :param reason: why, in a word: ``logout``, ``max_sessions_per_user``, ``end_session``,
        ``end_other_sessions``, ``end_all_sessions`` (or the `reason` given to those),
        ``found_at_load``, ``sweep``; None for ``created`` and ``renewed``.
    :param local: True when this process caused it; False when another process (or program)
        did and this one learnt it from the database's notification.
    :param previous: for ``renewed``, the fingerprint of the session it replaced.
    :param count: sessions it stands for: 1, or the rows a ``swept`` pass deleted.
    """

    name: str
    fingerprint: str
    user_id: int | str | None = None
    reason: str | None = None
    local: bool = True
    previous: str | None = None
    count: int = 1


Hook = Callable[[SessionEvent], Awaitable[object]]


def events_channel(table_channel: str) -> str:
    """The LISTEN/NOTIFY channel of the table's lifecycle events: the table's channel and
    ``:events`` (a hash of it when that would pass PostgreSQL's 63 bytes). Apart from the table's
    channel, whose payload format older processes parse (cache.py)."""
    name = f"{table_channel}:events"
    if len(name.encode()) <= 63:
        return name
    return "session_events:" + hashlib.sha256(table_channel.encode()).hexdigest()[:40]


@dataclass
class SessionHooks:
    """The storage's hooks (`signal`) and the delivery of events to them.

    :param owner: the signal's owner (the storage), for its repr.
    :param timeout: seconds one hook call may take before it is cancelled.
    """

    owner: object
    timeout: float
    signal: Signal[SessionEvent] = field(init=False)
    origin: str = field(init=False)
    _pending: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _dropped: int = field(init=False, default=0)
    _dropped_at: float = field(init=False, default=-DROP_REPORT_INTERVAL)
    # Whether `listen` has its LISTEN connection now.
    listening: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.signal = Signal(self.owner)
        # Names this process's own notifications, which it has delivered already.
        self.origin = hashlib.sha256(f"{id(self)}:{time.time_ns()}".encode()).hexdigest()[:16]

    def freeze(self) -> None:
        """No hook may be added or removed from now on (aiohttp freezes its own signals as the
        app starts; an append then raises RuntimeError)."""
        if not self.signal.frozen:
            self.signal.freeze()

    def send(self, event: SessionEvent) -> None:
        """Deliver `event` to every hook, in a task (nothing when no hook is subscribed, or when
        no event loop runs: a synchronous caller)."""
        if not self.signal:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            now = time.monotonic()
            if now - self._dropped_at >= DROP_REPORT_INTERVAL:
                log.warning(
                    "session hooks: %d events dropped, %d still running (hooks too slow?)",
                    self._dropped,
                    len(self._pending),
                )
                self._dropped, self._dropped_at = 0, now
            return
        task = loop.create_task(self._deliver(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, event: SessionEvent) -> None:
        for hook in tuple(self.signal):
            try:
                async with asyncio.timeout(self.timeout):
                    await hook(event)
            except TimeoutError:
                log.warning("session hook %s took over %s s on %s: cancelled", _name(hook), self.timeout, event.name)
            except Exception as exc:
                # Its type and where, not its message (nor a traceback, which ends with it): an
                # exception's message may quote session data.
                log.error(
                    "session hook %s raised %s on %s at %s", _name(hook), type(exc).__name__, event.name, _where(exc)
                )

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the hooks still running (at most `timeout` seconds, the hook timeout by
        default), cancel what is left: at the app's cleanup."""
        pending = set(self._pending)
        if not pending:
            return
        _done, left = await asyncio.wait(pending, timeout=self.timeout if timeout is None else timeout)
        for task in left:
            task.cancel()
        for task in left:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- across processes --------------------------------------------------------------------

    def payload(self, event: SessionEvent) -> str:
        """The notification that tells other processes of `event` (JSON, well under 8000 bytes)."""
        user_id = event.user_id
        if isinstance(user_id, str) and len(user_id) > MAX_USER_ID_CHARS:
            user_id = None
        body = {
            "v": _PAYLOAD_VERSION,
            "o": self.origin,
            "e": event.name,
            "f": event.fingerprint,
            "u": user_id,
            "r": (event.reason or "")[:MAX_REASON_CHARS] or None,
        }
        return orjson.dumps(body).decode()

    def notified(self, payload: str) -> None:
        """A notification on the events channel: delivered as a remote event unless it is this
        process's own or is not one this version understands (any role that can connect may
        NOTIFY: nothing in it is trusted beyond its shape)."""
        if not self.signal:
            return
        event = parse_payload(payload, origin=self.origin)
        if event is not None:
            self.send(event)

    async def listen(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        *,
        lost: Callable[[], None] | None = None,
        check_every: float = 2.0,
    ) -> None:
        """Keep a LISTEN connection on `channel` while the app runs (for a storage without a
        cache, whose listener carries these too), reconnecting with backoff (0.5 s doubling to
        5 s) and checking it every `check_every` / 2 seconds. `lost()` is called on each loss.
        Cancel to stop."""

        def up() -> None:
            self.listening = True
            log.info("session events: listening for other processes' events")

        def down(exc: Exception) -> None:
            self.listening = False
            log.warning(
                "session events: listener lost (%s): other processes' events missed until back", type(exc).__name__
            )
            if lost is not None:
                lost()

        try:
            await listener.listen(connect, {channel: self.notified}, up=up, down=down, check_every=check_every)
        except asyncio.CancelledError:
            self.listening = False
            raise


def parse_payload(payload: str, *, origin: str) -> SessionEvent | None:
    """The remote event a notification announces, or None (this process's own, or malformed)."""
    try:
        body: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("v") != _PAYLOAD_VERSION or body.get("o") == origin:
        return None
    name, fp, user_id, reason = body.get("e"), body.get("f"), body.get("u"), body.get("r")
    if name not in REMOTE_EVENTS or not isinstance(fp, str) or len(fp) != 8:
        return None
    if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, int | str)):
        return None
    if isinstance(user_id, str) and len(user_id) > MAX_USER_ID_CHARS:
        return None
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        return None
    try:
        int(fp, 16)
    except ValueError:
        return None
    return SessionEvent(name, fp, user_id, reason, local=False)


def _where(exc: BaseException) -> str:
    """file:line where `exc` was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _name(hook: Callable[..., object]) -> str:
    func = hook.func if isinstance(hook, partial) else hook
    return str(getattr(func, "__qualname__", None) or type(func).__name__)
