"""aiohttp-security on the store: `PostgresIdentityPolicy`, an identity policy whose
``remember()`` starts a new session tied to the user and whose ``forget()`` ends the session.

    pip install 'aiohttp-session-postgres[security]'

    import aiohttp_security
    from aiohttp_session_postgres.security import PostgresIdentityPolicy

    aiohttp_session_postgres.setup(app, storage)
    aiohttp_security.setup(app, PostgresIdentityPolicy(user_id_of=int), YourAuthorizationPolicy())

aiohttp-security's own ``SessionIdentityPolicy`` works on the store too, but its ``remember()``
writes the identity into the session the request came with, keeping that session's ID (a session
fixation: whoever planted the pre-login cookie shares the signed-in session), under a key of its
own (``"AIOHTTP_SECURITY"``), so the user's sessions cannot be listed, ended or capped; and its
``forget()`` only removes that key (the session ends only if nothing else is left in it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

try:
    from aiohttp_security import AbstractIdentityPolicy
except ImportError as exc:  # an optional dependency: say which extra brings it
    raise ImportError(
        "aiohttp_session_postgres.security needs aiohttp-security: pip install 'aiohttp-session-postgres[security]'"
    ) from exc

from .storage import get_session, new_session

_UNSET: Any = object()


class PostgresIdentityPolicy(AbstractIdentityPolicy):
    """An aiohttp-security identity policy keeping the identity in the session, under the
    storage's `user_id_key` (``"user_id"`` by default), as a login of the app's own does.

    - ``remember(request, response, identity)`` starts a new session (a new session ID: the one
      the request came with is used up when the response is saved, against fixation: OWASP,
      ASVS 7.2.4) and ties it to the user, so ``storage.list_sessions``, ``end_all_sessions`` and
      ``max_sessions_per_user`` count it. ``remember(..., max_age=N)`` sets the new session's
      ``max_age`` (aiohttp-session's per-session lifetime: None for a browser-session cookie).
    - ``forget(request, response)`` ends the session: its row is deleted and its cookie expired.
    - ``identify(request)`` is the session's user id as a str, or None.

    The cookie goes out with the response the handler returns or raises, whichever object was
    passed to ``remember``/``forget`` (the session middleware saves into the response).

    :param user_id_of: turns aiohttp-security's identity (always a str) into the value stored
        under `user_id_key`, e.g. ``int`` when the app's users have integer ids, so that
        ``list_sessions(42)`` finds the sessions ``remember(request, response, "42")`` made. None
        (the default): the identity itself, a str. A ValueError or TypeError it raises goes
        through ``remember`` to the handler.
    :param keep_data: False (the default): the new session starts empty but for the user id.
        True: it carries the data of the session it replaces (as aiohttp-security's own policy,
        which keeps the session, does: a cart, a page to return to), unless that session was
        another user's. Only with data the app would accept from anyone: a pre-login session may
        be one an attacker planted (a sibling subdomain can set a ``Domain`` cookie), and its
        data then enters the victim's signed-in session.
    :raises TypeError: for a `user_id_of` that is not callable, or a `keep_data` not a bool.
    """

    def __init__(self, *, user_id_of: Callable[[str], int | str] | None = None, keep_data: bool = False) -> None:
        if user_id_of is not None and not callable(user_id_of):
            raise TypeError(f"user_id_of must be callable or None, got {type(user_id_of).__name__}")
        if not isinstance(keep_data, bool):
            raise TypeError(f"keep_data must be True or False, got {type(keep_data).__name__}")
        self._user_id_of = user_id_of
        self._keep_data = keep_data

    async def identify(self, request: web.Request) -> str | None:
        """The user id the request's session holds, as a str; None for an anonymous one.

        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        session = await get_session(request)
        value = session.get(session.user_id_key)
        return None if value is None else str(value)

    async def remember(self, request: web.Request, response: web.StreamResponse, identity: str, **kwargs: Any) -> None:
        """Start a new session for `identity`, replacing the request's (see the class).

        :param kwargs: ``max_age`` (seconds, or None) alone.
        :raises TypeError: for another keyword argument; from `user_id_of`.
        :raises DatabaseUnavailable: when the database does not answer in time (the request's
            session is loaded first, to carry its data).
        """
        max_age = kwargs.pop("max_age", _UNSET)
        if kwargs:
            raise TypeError(f"remember() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        user_id = identity if self._user_id_of is None else self._user_id_of(identity)
        old = await get_session(request)
        key = old.user_id_key
        carry = self._keep_data and old.get(key) in (None, user_id)
        data = dict(old) if carry else {}
        session = await new_session(request)
        if max_age is not _UNSET:
            # First: a refused value leaves the new session empty and unchanged, so nothing is
            # saved and nobody is signed in, even if the app turns the error into a response.
            session.max_age = max_age
        session.update(data)
        if carry:
            session.allowed_size = old.size_allowed()  # a size the limit grandfathers stays allowed
        session[key] = user_id

    async def forget(self, request: web.Request, response: web.StreamResponse) -> None:
        """End the request's session: its row is deleted and its cookie expired when the
        response is saved. Nothing happens for a request without a session.

        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        (await get_session(request)).invalidate()
