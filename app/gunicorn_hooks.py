"""gunicorn's server hooks (`--config python:app.gunicorn_hooks`), run in gunicorn's master. With
METRICS_TOKEN set, prometheus-client's multiprocess mode needs a dead worker's live gauges removed
(its counters stay: they still count), and the directory `serve` made for this run (workers.py)
removed when gunicorn exits."""

from __future__ import annotations

import shutil
from typing import Any

from .config import load_settings

# Checked by `serve` before it became gunicorn. Only a directory `serve` made for this run is
# emptied and removed: one the operator gave (PROMETHEUS_MULTIPROC_DIR) is never touched.
_settings = load_settings()
_DIR = _settings.metrics_dir if _settings.metrics_dir_made_by_serve else None


def child_exit(server: Any, worker: Any) -> None:
    if _DIR is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(_DIR))


def on_exit(server: Any) -> None:
    if _DIR is not None:
        shutil.rmtree(_DIR, ignore_errors=True)
