"""Session events, one structured line each on the `aiohttp_session_postgres` logger (INFO):

    event=session.created fp=1a2b3c4d user_id=7

`fp` is a fingerprint of the session's ID hash (its first 4 bytes in hex): enough to follow one
session through the log, useless to authenticate. A token, a cookie or session data is never
logged. Events: session.created, session.renewed, session.ended, session.revoked,
session.expired_or_unknown, session.bad_signature, session.undecryptable,
session.ended_during_request, session.not_created, session.too_large.
`session.too_large` is a save over max_data_bytes, refused; it carries `bytes=` and `limit=`.
`session.revoked` carries the `user_id` and the `reason` (the method's name, or the app's).

Each record also carries its fields as attributes (``extra=``), for a structured (JSON) log
handler: `event`, `fp`, and the line's other fields by name (`user_id`, `reason`, `previous`,
`cookies`, `bytes`, `limit`); a field shown as "-" is None there.

To tag each line with the request it belongs to, add a logging.Filter to your handler (the demo
app adds Heroku's request ID that way). To act on events (close a user's websockets, write an
audit row), subscribe a hook (hooks.py): log lines are for people.
"""

from __future__ import annotations

import logging

from .tokens import fingerprint_of

log = logging.getLogger("aiohttp_session_postgres")


def emit(event: str, id_hash: bytes | None = None, **fields: object) -> None:
    """Log `event` for the session `id_hash`. `fields` must hold nothing secret."""
    if not log.isEnabledFor(logging.INFO):
        return
    parts = [f"event={event}"]
    extra: dict[str, object] = {"event": event}
    if id_hash is not None:
        fp = fingerprint_of(id_hash)
        parts.append(f"fp={fp}")
        extra["fp"] = fp
    for key, value in fields.items():
        parts.append(f"{key}={_quote(value)}")
        extra[f"{key}_" if key in _RESERVED else key] = None if value == "-" else value
    log.info("%s", " ".join(parts), extra=extra)


# What a LogRecord has already: a field of that name would make logging raise (KeyError).
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def fingerprint(id_hash: bytes | None) -> str:
    """The fingerprint of `id_hash` as logged, or "-"."""
    return fingerprint_of(id_hash) if id_hash else "-"


def _quote(value: object) -> str:
    # Printable ASCII without quotes or spaces stays bare; anything else is quoted with every
    # control character escaped, so a value can never start a line of its own.
    text = str(value)
    if text and all(c.isascii() and (c.isalnum() or c in "._:-/@") for c in text):
        return text
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
