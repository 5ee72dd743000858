"""The security headers every response carries: pages, redirects (the 308 to HTTPS included),
static files, errors (middlewares.py adds them), and the 400s and 500s aiohttp answers itself
(runner.py)."""

from __future__ import annotations

from aiohttp import web

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def secure(response: web.StreamResponse, *, https: bool) -> None:
    """Add the headers (keeping any a handler set itself); HSTS only over HTTPS (RFC 6797 §7.2)."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if https:
        headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
