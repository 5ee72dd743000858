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
  passed as `reason`; other processes receive ``other`` for one of characters beyond
  `REASON_PATTERN`'s), and the per-user cap (reason ``max_sessions_per_user``). The process
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

Events from other processes have a queue budget of their own (`MAX_PENDING_REMOTE`), apart from
this process's (`MAX_PENDING`): a burst of revocations elsewhere (a cron job ending thousands of
sessions) never makes this process drop one of its own.

The events channel and who can read or write it: any database role that can connect may LISTEN
on a channel and NOTIFY on it, whatever its table privileges. So each payload is sealed with the
storage's encryption keys (AES-GCM, cipher.py: sealed under the first of `encryption_keys`,
opened with any of `encryption_keys` and `next_encryption_keys`, as session data is), with
``events:`` and the channel's name as associated data (a session row's sealed data never opens
as an event, nor an event as session data, nor one table's events on another's channel), then
base64 (a NOTIFY payload is text). A role that can LISTEN learns only that revocations happen
(how many, when, a str user id's rough length), no user id, fingerprint or reason; one that can
NOTIFY cannot forge one: a payload that does not open is dropped, counted in a log line at most
once a minute (never its content), and never reaches the hooks nor the pending queue. Each
carries the time it was sealed, and a process delivers one only within `REPLAY_WINDOW` seconds
of it and only once (by its random nonce): a captured payload sent again is dropped. What opens
is still checked field by field (format version, event name, user id as
`identity.user_id_problem` accepts, fingerprint as `fingerprint_of` makes, reason of
`REASON_PATTERN`): one that fails is dropped, as is one this process sealed itself (its origin),
which it delivered already. During a key rotation, processes open what was sealed under any key
they hold. Payload format 2 (sealed) replaced format 1 (plain JSON) before any release: a
process of format 1 ignores format 2's payloads, and the other way round.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import asyncpg
import orjson
from aiosignal import Signal

from . import listener
from .cipher import DataCipher
from .identity import user_id_problem

log = logging.getLogger("aiohttp_session_postgres")

# This process's events whose hooks have not finished, per storage, at most; past it new ones
# are dropped.
MAX_PENDING = 1000
# The same for events from other processes, counted apart: they never crowd out this process's.
MAX_PENDING_REMOTE = 1000
# Seconds between two log lines about dropped or ignored events.
DROP_REPORT_INTERVAL = 60.0
MAX_REASON_CHARS = 100
# A reason as it travels to other processes: printable ASCII words (no control character, so no
# line break in a hook's log line); a reason of other characters travels as ``other``.
REASON_PATTERN = re.compile(r"[A-Za-z0-9_ .:/-]{1,100}")
_FINGERPRINT = re.compile(r"[0-9a-f]{8}")  # tokens.fingerprint_of: 4 bytes in lowercase hex
# Seconds either side of its sealing within which a notification is delivered; within it each is
# delivered once (its nonce remembered for two windows). An hour, not minutes: hosts' clocks may
# differ by minutes (tests/app/test_clock_skew.py runs the app minutes off), a revoking
# transaction may commit late, and a revocation lost to a skewed clock would leave a revoked
# user's websockets open, while a replay inside the window is refused all the same.
REPLAY_WINDOW = 3600.0
# Nonces of delivered notifications remembered at most, for the replay check.
MAX_SEEN = 100_000

EVENT_NAMES = frozenset({"created", "renewed", "ended", "revoked", "expired", "swept"})
# The events other processes are told of, over the events channel.
REMOTE_EVENTS = frozenset({"revoked"})
# 2: sealed with the encryption keys (format 1, plain JSON, was never released).
_PAYLOAD_VERSION = 2
_NONCE_BYTES = 12  # cipher.py's sealed form starts with its random nonce


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
    :param cipher: the storage's encryption keys, which seal and open the events channel's
        payloads.
    :param channel: the events channel (`events_channel`), bound into each payload.
    """

    owner: object
    timeout: float
    cipher: DataCipher
    channel: str
    signal: Signal[SessionEvent] = field(init=False)
    _origin: str = field(init=False)
    _origin_pid: int = field(init=False)
    _pending: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _pending_remote: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _dropped: int = field(init=False, default=0)
    _dropped_at: float = field(init=False, default=-DROP_REPORT_INTERVAL)
    _ignored: int = field(init=False, default=0)
    _ignored_at: float = field(init=False, default=-DROP_REPORT_INTERVAL)
    _skewed_at: float = field(init=False, default=-DROP_REPORT_INTERVAL)
    # Nonce of each notification delivered: monotonic time of its arrival (arrival order).
    _seen: dict[bytes, float] = field(init=False, default_factory=dict)
    # Whether `listen` has its LISTEN connection now.
    listening: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.signal = Signal(self.owner)
        self._origin, self._origin_pid = "", -1

    @property
    def origin(self) -> str:
        """Names this process's own notifications, which it has delivered already: new in a
        process forked after the storage was made (gunicorn's --preload), else the workers
        would take each other's notifications for their own."""
        if self._origin_pid != os.getpid():
            self._origin_pid = os.getpid()
            self._origin = hashlib.sha256(f"{id(self)}:{self._origin_pid}:{time.time_ns()}".encode()).hexdigest()[:16]
        return self._origin

    def freeze(self) -> None:
        """No hook may be added or removed from now on (aiohttp freezes its own signals as the
        app starts; an append then raises RuntimeError)."""
        if not self.signal.frozen:
            self.signal.freeze()

    def send(self, event: SessionEvent) -> None:
        """Deliver `event` to every hook, in a task (nothing when no hook is subscribed, or when
        no event loop runs: a synchronous caller). Events of this process and of others
        (``local=False``) wait in queues of their own (`MAX_PENDING`, `MAX_PENDING_REMOTE`)."""
        if not self.signal:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pending = self._pending if event.local else self._pending_remote
        if len(pending) >= (MAX_PENDING if event.local else MAX_PENDING_REMOTE):
            self._dropped += 1
            now = time.monotonic()
            if now - self._dropped_at >= DROP_REPORT_INTERVAL:
                log.warning(
                    "session hooks: %d events dropped, %d still running (hooks too slow?)",
                    self._dropped,
                    len(self._pending) + len(self._pending_remote),
                )
                self._dropped, self._dropped_at = 0, now
            return
        task = loop.create_task(self._deliver(event))
        pending.add(task)
        task.add_done_callback(pending.discard)

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
        pending = self._pending | self._pending_remote
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
        """The notification that tells other processes of `event`: sealed (the module's
        docstring), in base64, under 3000 characters (NOTIFY carries at most 8000 bytes). A user
        id the library would refuse travels as None, a reason not of `REASON_PATTERN` as
        ``other``."""
        user_id = event.user_id if user_id_problem(event.user_id) is None else None
        reason = event.reason
        if reason is not None and not REASON_PATTERN.fullmatch(reason):
            reason = "other"
        body = {
            "v": _PAYLOAD_VERSION,
            "o": self.origin,
            "t": int(time.time()),
            "e": event.name,
            "f": event.fingerprint,
            "u": user_id,
            "r": reason,
        }
        return seal_payload(body, cipher=self.cipher, channel=self.channel)

    def notified(self, payload: str) -> None:
        """A notification on the events channel: delivered as a remote event when it opens
        with the storage's keys, passes every check (`parse_payload`), was sealed by another
        process (this one's own it delivered already), within `REPLAY_WINDOW` seconds, and was
        not delivered before. Anything else is dropped, counted in a log line at most once a
        minute. Never raises (it runs in the LISTEN connection's callback)."""
        try:
            if not self.signal:
                return
            notice = parse_payload(payload, cipher=self.cipher, channel=self.channel)
            if notice is None:
                self._ignore()
            elif notice.origin != self.origin and self._first_time(notice.nonce, notice.sealed_at):
                self.send(notice.event)
        except Exception as exc:  # a bug here must not end the listener's callbacks
            log.error("session events: a notification raised %s at %s: ignored", type(exc).__name__, _where(exc))

    def _first_time(self, nonce: bytes, sealed_at: int) -> bool:
        """Whether the notification of `nonce`, sealed at `sealed_at` (Unix seconds), is within
        the replay window and not delivered before; it then counts as delivered."""
        skew = int(time.time()) - sealed_at  # ints: no float overflow
        if abs(skew) >= REPLAY_WINDOW:
            now = time.monotonic()
            if now - self._skewed_at >= DROP_REPORT_INTERVAL:
                log.warning(
                    "session events: a revocation sealed %d s from this host's clock was dropped:"
                    " are the hosts' clocks more than %d s apart?",
                    skew,
                    REPLAY_WINDOW,
                )
                self._skewed_at = now
            return False
        now = time.monotonic()
        seen = self._seen
        # Arrival order: the oldest first. One that arrived two windows ago was sealed over one
        # window ago: a replay of it is refused by its time.
        while seen and (len(seen) >= MAX_SEEN or next(iter(seen.values())) < now - 2 * REPLAY_WINDOW):
            del seen[next(iter(seen))]
        if nonce in seen:
            self._ignore()
            return False
        seen[nonce] = now
        return True

    def _ignore(self) -> None:
        """Count a notification dropped unheard; a log line at most once a minute (no content)."""
        self._ignored += 1
        now = time.monotonic()
        if now - self._ignored_at >= DROP_REPORT_INTERVAL:
            log.warning(
                "session events: %d notifications on the events channel ignored (not sealed with this"
                " storage's keys, of another format, or sent again)",
                self._ignored,
            )
            self._ignored, self._ignored_at = 0, now

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


class Notice(NamedTuple):
    """A notification on the events channel, opened and checked."""

    event: SessionEvent
    origin: str  # which process sealed it (`SessionHooks.origin`)
    sealed_at: int  # Unix seconds
    nonce: bytes  # its sealing's random nonce: one per notification


def parse_payload(payload: str, *, cipher: DataCipher, channel: str) -> Notice | None:
    """What a notification on `channel` announces, or None when it does not open with `cipher`
    or fails a check: format version (an int, the current), event name (a str of
    `REMOTE_EVENTS`), user id (as `identity.user_id_problem` accepts, or None), fingerprint (as
    `fingerprint_of` makes), reason (of `REASON_PATTERN`, or None), origin and time. Never
    raises."""
    try:
        sealed = base64.b64decode(payload, validate=True)
    except ValueError:  # not ASCII, or not base64 (binascii.Error)
        return None
    opened = cipher.open(sealed, _associated_data(channel))
    if opened is None:
        return None
    try:
        body: Any = orjson.loads(opened[0])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    version, origin, sealed_at = body.get("v"), body.get("o"), body.get("t")
    name, fp, user_id, reason = body.get("e"), body.get("f"), body.get("u"), body.get("r")
    if type(version) is not int or version != _PAYLOAD_VERSION or type(sealed_at) is not int:
        return None
    if not isinstance(origin, str) or not isinstance(name, str) or name not in REMOTE_EVENTS:
        return None
    if not isinstance(fp, str) or not _FINGERPRINT.fullmatch(fp):
        return None
    if user_id is not None and user_id_problem(user_id) is not None:
        return None
    if reason is not None and (not isinstance(reason, str) or not REASON_PATTERN.fullmatch(reason)):
        return None
    return Notice(SessionEvent(name, fp, user_id, reason, local=False), origin, sealed_at, sealed[:_NONCE_BYTES])


def seal_payload(body: dict[str, object], *, cipher: DataCipher, channel: str) -> str:
    """`body` as a notification on `channel`: JSON, sealed under `cipher`'s first key, base64."""
    return base64.b64encode(cipher.seal(orjson.dumps(body), _associated_data(channel))).decode("ascii")


def _associated_data(channel: str) -> bytes:
    """What binds a sealed payload to its channel and purpose (never a session row's id_hash,
    32 bytes of a hash: a row's data cannot open as an event, nor an event as a row's data)."""
    return b"events:" + channel.encode()


def _where(exc: BaseException) -> str:
    """file:line where `exc` was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def _name(hook: Callable[..., object]) -> str:
    func = hook.func if isinstance(hook, partial) else hook
    return str(getattr(func, "__qualname__", None) or type(func).__name__)
