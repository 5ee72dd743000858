"""The package says it is typed (py.typed): `mypy --strict` passes on it, and on code that uses it
as the README shows (the README's app and aiohttp-security recipe, and outside_app.py), with
asyncpg's stubs installed as the `typing` extra installs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO_ROOT
from support.readme import readme_app, readme_security


def mypy(*targets: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *targets],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_package_passes_mypy_strict() -> None:
    result = mypy("-p", "aiohttp_session_postgres")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("app", ["readme", "readme_security", "outside"])
def test_code_using_the_package_as_documented_passes_mypy_strict(app: str, tmp_path: Path) -> None:
    sources = {
        "readme": readme_app,
        "readme_security": readme_security,
        "outside": lambda: (REPO_ROOT / "tests" / "support" / "outside_app.py").read_text(),
    }
    source = sources[app]()
    target = tmp_path / f"{app}_app.py"
    target.write_text(source)
    # Run from the checkout so that the package is found as a user's installed copy would be.
    result = mypy(str(target))
    assert result.returncode == 0, result.stdout + result.stderr
