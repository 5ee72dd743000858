"""`/metrics`: the session store's Prometheus metrics (the library's PrometheusMetrics), served
only to the bearer token METRICS_TOKEN; without it the path does not exist (404).

With several gunicorn workers, `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh temporary
directory before any worker starts (workers.py): each worker writes its values there, and the
worker that answers a scrape reads them all (prometheus-client's multiprocess mode), so one
scrape sees every worker. gunicorn's master removes a dead worker's live gauges
(gunicorn_hooks.py) and the directory when it exits.
"""

from __future__ import annotations

import hmac

from aiohttp import hdrs, web
from aiohttp_session_postgres import PrometheusMetrics
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from . import pages
from .appkeys import SETTINGS
from .config import Settings

PATH = "/metrics"
METRICS = web.AppKey("metrics_registry", CollectorRegistry)


def storage_metrics(settings: Settings) -> tuple[PrometheusMetrics, CollectorRegistry]:
    """The storage's metrics, in a registry of this app's own (an app built twice in one process,
    as the tests do, must not register a name twice in prometheus-client's global one)."""
    registry = CollectorRegistry()
    return PrometheusMetrics(registry=registry), registry


def add_route(app: web.Application, registry: CollectorRegistry) -> None:
    app[METRICS] = registry
    app.router.add_get(PATH, serve_metrics)


async def serve_metrics(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    assert settings.metrics_token is not None
    if not _authorized(request.headers.get(hdrs.AUTHORIZATION, ""), settings.metrics_token):
        # Nothing said about what was wrong: missing, malformed and wrong are one answer.
        response = pages.error(401, "Unauthorized", "This needs the metrics token.")
        response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="metrics"'
        return response
    if settings.metrics_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(settings.metrics_dir))
    else:
        registry = request.app[METRICS]
    response = web.Response(body=generate_latest(registry))
    response.headers[hdrs.CONTENT_TYPE] = CONTENT_TYPE_LATEST
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


def _authorized(header: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time (its length aside)."""
    given = header.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, f"Bearer {token}".encode())
