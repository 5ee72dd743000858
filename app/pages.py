"""The HTML the app renders. Every dynamic value goes through `escape`; no inline script or style."""

from __future__ import annotations

from html import escape

from aiohttp import web


def _layout(title: str, body: str) -> str:
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
<main class="card">
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
<form method="post" action="/logout">
<button type="submit">Log out</button>
</form>""",
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


def error(status: int, title: str, message: str) -> web.Response:
    body = f"""<h1>{escape(title)}</h1>
<p role="alert">{escape(message)}</p>
<p><a href="/">Home</a></p>"""
    response = html(_layout(title, body), status=status)
    return response
