"""Several worker processes on one port (WEB_CONCURRENCY > 1): gunicorn with aiohttp's worker.

`python -m app serve` checks the settings and the database once, in its own process, so a bad
setting or an unmigrated database is still one `error:` line rather than one traceback per
worker. Then it replaces itself with gunicorn (exec, not a child): Heroku's SIGTERM reaches
gunicorn's master directly, which passes it to the workers and waits for them.

Each worker calls `create` after the fork and builds the whole app from the same environment:
its own asyncpg pool (up to DATABASE_POOL_MAX connections), its own sweeper. On SIGTERM a worker
stops accepting, lets in-flight requests finish (up to 95% of the graceful timeout), stops the
sweeper and closes its pool.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import tempfile

from aiohttp import web

from . import logs
from .config import METRICS_DIR_MARKER, ConfigError, Settings, load_settings
from .runner import KEEPALIVE_TIMEOUT, SHUTDOWN_TIMEOUT, runner
from .schema import ROOT
from .server import StartupError, create_app, open_pool

# gunicorn's own wait for its workers after SIGTERM (theirs is SHUTDOWN_TIMEOUT, within it).
GRACEFUL_TIMEOUT = SHUTDOWN_TIMEOUT + 2
# gunicorn's exit status for "a worker failed to boot": its master stops instead of respawning.
WORKER_BOOT_ERROR = 3


def gunicorn_argv(settings: Settings) -> list[str]:
    """The gunicorn command line for these settings."""
    worker = "app.gunicorn_worker.UVLoopWorker" if importlib.util.find_spec("uvloop") else "aiohttp.GunicornWebWorker"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "app.workers:create",
        "--worker-class",
        worker,
        "--bind",
        f"{settings.host}:{settings.port}",
        "--workers",
        str(settings.web_concurrency),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT),
        "--keep-alive",
        str(KEEPALIVE_TIMEOUT),
        "--pythonpath",
        str(ROOT),
        "--log-level",
        settings.log_level.lower(),
        # gunicorn's runtime control socket: not used, and one fixed path for every instance.
        "--no-control-socket",
        # child_exit and on_exit: the metrics' multiprocess directory (METRICS_TOKEN).
        "--config",
        "python:app.gunicorn_hooks",
    ]


def exec_gunicorn(settings: Settings) -> None:
    """Check the database once, then become gunicorn. Returns only by raising StartupError."""
    assert settings.database_url is not None, "embedded mode runs one process"
    asyncio.run(_check_database(settings))
    if settings.metrics_token is not None:
        # Before any worker starts, so every worker writes its metrics where a scrape of any of
        # them reads: a fresh directory (files left by an earlier run would count again).
        made = tempfile.mkdtemp(prefix="app-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[METRICS_DIR_MARKER] = made
    argv = gunicorn_argv(settings)
    logging.getLogger(__name__).info("starting %d worker processes (gunicorn)", settings.web_concurrency)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


async def _check_database(settings: Settings) -> None:
    pool = await open_pool(settings)  # connects, checks the schema revision; StartupError otherwise
    await pool.close()


async def create() -> web.AppRunner:
    """gunicorn's app factory, called in each worker process after the fork. A runner (not the
    app): aiohttp's worker then serves it as it is, so protocol-level errors are answered as in one
    process (runner.py), and the timeouts are the same."""
    try:
        settings = load_settings()
        logs.configure(settings.log_level, log_format=settings.log_format)
        return runner(
            await create_app(settings),
            access_log=settings.access_log,
            header_timeout=settings.http_header_timeout,
            max_connections=settings.http_max_connections,
        )
    except (ConfigError, StartupError) as exc:
        # Checked before gunicorn started, so only a change since then (the database went away)
        # lands here: one line, and gunicorn stops rather than respawning workers forever.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(WORKER_BOOT_ERROR) from None
