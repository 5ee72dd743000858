"""The library's tests need nothing of the demo app: nothing they load imports `app`, neither a
test module, nor a helper of tests/support, nor a conftest.py pytest loads for them.

Checked twice: by collecting tests/library in a pytest of its own, which imports every test
module, its helpers and conftest.py files, and then reports what of `app` is in sys.modules
(support/app_imports.py); and by reading the sources of those modules, for an `import app`
inside a function, which only running the test would reach.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from support.app_imports import REPORT
from support.paths import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def test_collecting_the_library_tests_imports_nothing_of_the_app(tmp_path: Path) -> None:
    report = tmp_path / "app-modules.json"
    paths = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), REPORT: str(report)}
    collect = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "support.app_imports", str(TESTS / "library")]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *collect],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_no_app.py::test_collecting_the_library_tests_imports_nothing_of_the_app" in result.stdout
    assert json.loads(report.read_text()) == [], "collecting tests/library imported the demo app"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (in functions too), by absolute name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_test_or_helper_it_uses_imports_the_app_even_inside_a_function() -> None:
    todo = [TESTS / "conftest.py", *sorted((TESTS / "library").rglob("*.py"))]
    seen: set[Path] = set()
    offenders: list[str] = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imports_of(path):
            if module == "app" or module.startswith("app."):
                offenders.append(f"{path.relative_to(REPO_ROOT)}: imports {module}")
            if module.startswith("support."):
                helper = TESTS.joinpath(*module.split(".")).with_suffix(".py")
                if helper.is_file():
                    todo.append(helper)
    assert len(seen) > 20  # the test modules, conftest.py and their helpers were read
    assert offenders == [], "\n".join(offenders)
