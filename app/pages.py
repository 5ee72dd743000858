"""The HTML the app renders. Every dynamic value goes through `escape`; no inline script or style."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from html import escape

from aiohttp import web
from aiohttp_session_postgres import SessionInfo

from . import useragent
from .text import plural


def _layout(title: str, body: str, *, wide: bool = False, private: bool = False) -> str:
    # Pages that show session data reload instead of coming back from the back/forward cache.
    script = '\n<script src="/public/private-page.js" defer></script>' if private else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="/public/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/public/style.css">{script}
</head>
<body>
<header class="brand"><img src="/public/favicon.svg" alt="" width="28" height="28"><span>Session demo</span></header>
<main class="card{" wide" if wide else ""}">
{body}
</main>
</body>
</html>
"""


def html(text: str, *, status: int = 200, private: bool = False) -> web.Response:
    """An HTML response. `private`: it shows session data, so no cache may keep it."""
    response = web.Response(text=text, status=status, content_type="text/html")
    if private:
        response.headers["Cache-Control"] = "no-store"
    return response


@functools.lru_cache(maxsize=1024)  # the page depends on the name alone, and is the hot path
def home(username: str) -> str:
    body = f"""<div class="avatar" aria-hidden="true">{escape(username[:1].upper())}</div>
<h1>Hello {escape(username)}</h1>
<p class="lead">You are signed in.</p>
<div class="actions">
<form class="inline" method="post" action="/logout">
<button type="submit">Log out</button>
</form>
<a class="button secondary" href="/sessions">Your sessions</a>
</div>"""
    return _layout("Home", body, private=True)


def logout_form() -> str:
    return _layout(
        "Log out",
        """<h1>Log out</h1>
<p class="lead">End your session on this device.</p>
<div class="actions">
<form class="inline" method="post" action="/logout">
<button type="submit">Log out</button>
</form>
<a class="button secondary" href="/">Back</a>
</div>""",
    )


def error(status: int, title: str, message: str, *, link: tuple[str, str] = ("/", "Home")) -> web.Response:
    body = f"""<h1>{escape(title)}</h1>
<p class="error lead" role="alert">{escape(message)}</p>
<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>"""
    return html(_layout(title, body), status=status)


def bad_form(exc: Exception) -> web.Response:
    """The answer to a form that could not be read (forms.FormError): 400, or 408 when it was
    too slow to arrive (then the connection is closed: what is left of the body is not read)."""
    status = getattr(exc, "status", 400)
    response = error(status, "Request timeout" if status == 408 else "Bad request", str(exc))
    if status == 408:
        response.force_close()
    return response


def busy() -> web.Response:
    """503: the process has as many logins in hand as it takes; try again in a moment."""
    response = error(503, "Busy", "Too many sign-ins at once. Please try again in a moment.")
    response.headers["Retry-After"] = "2"
    return response


def too_many_attempts(retry_after: int) -> web.Response:
    minutes = max(1, round(retry_after / 60))
    response = error(
        429,
        "Too many attempts",
        f"Too many failed logins. Please wait about {plural(minutes, 'minute')} and try again.",
        link=("/public/login.html", "Back to the login form"),
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def sessions(
    username: str,
    live: list[SessionInfo],
    *,
    current: str | None,
    notice: str | None = None,
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    # This device first, then the others, most recently active first (as listed).
    live = sorted(live, key=lambda info: info.handle != current)
    rows = []
    for info in live:
        this = info.handle == current
        described = useragent.describe(info.user_agent)
        device = escape(described.name)
        badge = ' <span class="badge">this device</span>' if this else ""
        icon = _PHONE_ICON if described.handheld else _COMPUTER_ICON
        signed_in = f'<time datetime="{info.created_at.isoformat()}">{escape(_date(info.created_at, now))}</time>'
        rows.append(
            f"""<tr>
<td><div class="device">
<span class="device-icon" aria-hidden="true">{icon}</span>
<div><span class="device-title"><span class="device-name">{device}</span>{badge}</span>
<span class="meta"><span>{escape(info.client_ip or "unknown IP")}</span>
<span>last active {escape(ago(info.last_seen_at, now))}</span>
<span>signed in {signed_in}</span></span>
</div></div></td>
<td class="action"><form class="inline" method="post" action="/sessions/revoke">
<input type="hidden" name="handle" value="{escape(info.handle)}">
<button type="submit" class="secondary">{"Sign out" if this else "Revoke"}</button>
</form></td>
</tr>"""
        )
    others = any(info.handle != current for info in live)
    sign_out_others = (
        """<form class="inline" method="post" action="/sessions/revoke-others">
<button type="submit">Sign out all other sessions</button>
</form>
"""
        if others
        else ""
    )
    message = f'<p class="notice" role="status">{escape(notice)}</p>\n' if notice else ""
    body = f"""<h1>Your sessions</h1>
{message}<p class="lead">Signed in as {escape(username)}. These are the devices signed in to your account;
revoke any you do not recognise.</p>
<table class="sessions">
<thead class="visually-hidden"><tr><th>Device</th><th>Action</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
<div class="actions">
{sign_out_others}<a class="button secondary" href="/">Back to home</a>
</div>"""
    return _layout("Your sessions", body, wide=True, private=True)


_SVG = (
    'viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.8"'
    ' stroke-linecap="round" stroke-linejoin="round"'
)
_COMPUTER_ICON = f'<svg {_SVG}><rect x="4" y="5" width="16" height="11" rx="1.5"/><path d="M2 19h20"/></svg>'
_PHONE_ICON = f'<svg {_SVG}><rect x="7" y="2.5" width="10" height="19" rx="2.2"/><path d="M11 18.5h2"/></svg>'


def ago(then: datetime, now: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{plural(n, unit)} ago"
    return "just now"


def _date(moment: datetime, now: datetime) -> str:
    """Like "26 Nov, 09:41 UTC"; with the year when it is not the current one."""
    moment = moment.astimezone(UTC)
    year = "" if moment.year == now.astimezone(UTC).year else f" {moment.year}"
    return f"{moment.day} {moment:%b}{year}, {moment:%H:%M} UTC"
