"""What the storage takes from a request, all of it hostile until checked: the values of the
cookies that carry the session cookie's name, and the client's address and User-Agent, made
valid text before they reach the database."""

from __future__ import annotations

MAX_IP_CHARS, MAX_USER_AGENT_CHARS = 64, 512
# A request may carry several cookies of one name (one set for a sub-path, one by a sibling app on
# the same host over plain HTTP); each verified one may cost a lookup, so only so many are tried.
MAX_CANDIDATES = 4
# Cookies of that name looked at at all (each costs an HMAC): a header can carry hundreds.
MAX_VALUES = 16


def cookie_values(header: str | None, name: str) -> list[str]:
    """The values of every cookie called `name` in a Cookie header, in the order sent (browsers
    send the most specific path first). Read from the raw header: request.cookies builds a Morsel
    for every cookie, which was a measurable share of a cache hit. Quotes are kept: a quoted value
    is no token and fails verification."""
    if not header or name not in header:
        return []
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip())
    return values


def valid_text(value: str, max_chars: int) -> str:
    """`value` cut to `max_chars`, as text PostgreSQL accepts: aiohttp hands over a header byte
    that is not UTF-8 as a lone surrogate, which asyncpg cannot encode (DataError), and a text
    column cannot hold NUL. Both become U+FFFD."""
    value = value[:max_chars].replace("\x00", "\ufffd")
    if value.isascii():
        return value
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
