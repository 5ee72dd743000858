"""User identities: the value of `session[user_id_key]` that ties a session to a user, so that a
user's sessions can be listed and ended, capped, and locked against a renewal in flight.

An identity is an `int` within 64 bits (PostgreSQL's bigint; a bool is not one), stored in the
table's `user_id` column, or a `str` (a UUID as its string, a username, an email address), stored
in its `principal` column (Spring Session's term: the principal name). A str is 1 to
`MAX_PRINCIPAL_BYTES` bytes of UTF-8 (255: an email address is at most 254), without NUL (which a
PostgreSQL text cannot hold) and without unpaired surrogates (not UTF-8), compared exactly as
given: the app decides its spelling (case, a UUID's hyphens and hex case), and ``7`` and ``"7"``
are two different users. A row has at most one of the two columns set.
"""

from __future__ import annotations

from typing import TypeAlias

UserId: TypeAlias = int | str

# A str identity's bound, in bytes of UTF-8; the table's CHECK constraint says the same.
MAX_PRINCIPAL_BYTES = 255
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def user_id_problem(value: object) -> str | None:
    """What makes `value` no user identity, or None for a good one (an int within 64 bits, or a
    str of 1 to 255 bytes of UTF-8 without NUL)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"it must be an int or a str user id, not {type(value).__name__}"
    if isinstance(value, int):
        if not _BIGINT_MIN <= value <= _BIGINT_MAX:
            return "an int user id must be within 64 bits (PostgreSQL's bigint)"
        return None
    if "\x00" in value:
        return "a str user id cannot contain NUL"
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        return "a str user id must be valid UTF-8 (no unpaired surrogates)"
    if not 1 <= size <= MAX_PRINCIPAL_BYTES:
        return f"a str user id must be 1 to {MAX_PRINCIPAL_BYTES} bytes of UTF-8, not {size}"
    return None


def check_user_id(value: object, argument: str) -> UserId:
    """`value`, when it is a user identity.

    :param argument: the argument's name, for the message.
    :raises TypeError: for anything but an int (not a bool) or a str.
    :raises ValueError: for an int outside 64 bits, or a str that is empty, longer than 255 bytes
        of UTF-8, or holds NUL or an unpaired surrogate.
    """
    problem = user_id_problem(value)
    if problem is None:
        assert isinstance(value, int | str)
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{argument}: {problem}")
    raise ValueError(f"{argument}: {problem}")


def columns(user_id: UserId | None) -> tuple[int | None, str | None]:
    """The identity as the table's (user_id, principal) pair: at most one of them set."""
    if isinstance(user_id, str):
        return None, user_id
    return user_id, None
