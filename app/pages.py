"""The HTML the app renders. Every dynamic value goes through `escape`; no inline script or style."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from aiohttp import web

from . import useragent
from .user_sessions import SessionInfo


def _layout(title: str, body: str, *, wide: bool = False) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="/public/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/public/style.css">
</head>
<body>
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


def home(username: str) -> str:
    return _layout(
        "Home",
        f"""<h1>Hello {escape(username)}</h1>
<p>You are signed in.</p>
<div class="actions">
<form class="inline" method="post" action="/logout">
<button type="submit">Log out</button>
</form>
<a href="/sessions">Your sessions</a>
</div>""",
    )


def logout_form() -> str:
    return _layout(
        "Log out",
        """<h1>Log out</h1>
<form method="post" action="/logout">
<button type="submit">Log out</button>
</form>
<p><a href="/">Back</a></p>""",
    )


def error(status: int, title: str, message: str, *, link: tuple[str, str] = ("/", "Home")) -> web.Response:
    body = f"""<h1>{escape(title)}</h1>
<p class="error" role="alert">{escape(message)}</p>
<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>"""
    return html(_layout(title, body), status=status)


def too_many_attempts(retry_after: int) -> web.Response:
    minutes = max(1, round(retry_after / 60))
    response = error(
        429,
        "Too many attempts",
        f"Too many failed logins. Please wait about {minutes} minute{'s' if minutes != 1 else ''} and try again.",
        link=("/public/login.html", "Back to the login form"),
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def sessions(username: str, live: list[SessionInfo], *, current: bytes | None, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = []
    for info in live:
        this = info.id_hash == current
        device = escape(useragent.describe(info.user_agent))
        badge = ' <span class="badge">this device</span>' if this else ""
        rows.append(
            f"""<tr>
<td>{device}{badge}</td>
<td>{escape(info.client_ip or "unknown")}</td>
<td><time datetime="{info.created_at.isoformat()}">{escape(_date(info.created_at))}</time></td>
<td>last active {escape(ago(info.last_seen_at, now))}</td>
<td><form class="inline" method="post" action="/sessions/revoke">
<input type="hidden" name="handle" value="{escape(info.handle)}">
<button type="submit" class="secondary">{"Sign out" if this else "Revoke"}</button>
</form></td>
</tr>"""
        )
    body = f"""<h1>Your sessions</h1>
<p class="muted">Signed in as {escape(username)}. These are the devices signed in to your account.</p>
<table>
<thead><tr><th>Device</th><th>IP address</th><th>Signed in</th><th>Activity</th>
<th><span class="visually-hidden">Action</span></th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
<div class="actions">
<form class="inline" method="post" action="/sessions/revoke-others">
<button type="submit">Sign out all other sessions</button>
</form>
<a href="/">Home</a>
</div>"""
    return _layout("Your sessions", body, wide=True)


def ago(then: datetime, now: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
