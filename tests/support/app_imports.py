"""A pytest plugin for tests/library/test_no_app.py: once collection is done, it writes the
modules of the demo app (`app` and `app.*`) found in sys.modules, as a JSON list, to the file
named by the environment variable APP_IMPORTS_REPORT.

    APP_IMPORTS_REPORT=out.json PYTHONPATH=tests python -m pytest --collect-only -p support.app_imports tests/library
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPORT = "APP_IMPORTS_REPORT"


def app_modules() -> list[str]:
    return sorted(name for name in sys.modules if name == "app" or name.startswith("app."))


def pytest_collection_finish(session: pytest.Session) -> None:
    report = os.environ.get(REPORT)
    if report:
        Path(report).write_text(json.dumps(app_modules()))
