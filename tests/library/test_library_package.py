"""The library stands apart from the demo: it imports nothing of the demo, the demo imports only
its public names, every public name is documented and typed, and the wheel holds the library
alone and installs into a fresh virtual environment, as does the checkout's path."""

from __future__ import annotations

import ast
import inspect
import zipfile
from pathlib import Path

import aiohttp_session_postgres
import pytest
from aiohttp_session_postgres.schema import split_schema_sql
from support.library_envs import run_in
from support.paths import REPO_ROOT

LIBRARY = REPO_ROOT / "aiohttp_session_postgres"
DEMO = [REPO_ROOT / "app", REPO_ROOT / "migrations"]


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement of a file; relative imports as '.module'."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((module, [alias.name for alias in node.names]))
    return found


def test_the_library_imports_nothing_of_the_demo() -> None:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        for module, _ in imports_of(path):
            top = module.split(".")[0]
            assert top not in ("app", "migrations", "bench", "tests", "conftest"), f"{path}: imports {module}"


def test_the_demo_uses_only_the_librarys_public_names() -> None:
    public = set(aiohttp_session_postgres.__all__)
    uses = 0
    for folder in DEMO:
        for path in sorted(folder.rglob("*.py")):
            for module, names in imports_of(path):
                if module == "aiohttp_session_postgres":
                    assert set(names) <= public, f"{path}: imports private {set(names) - public}"
                    uses += 1
                else:
                    assert not module.startswith("aiohttp_session_postgres."), f"{path}: imports {module}"
    assert uses >= 5  # the demo does use it


def test_every_public_name_is_documented() -> None:
    for name in aiohttp_session_postgres.__all__:
        value = getattr(aiohttp_session_postgres, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
            if inspect.isfunction(value):
                assert "return" in inspect.get_annotations(value), f"{name} has no return annotation"
    storage = aiohttp_session_postgres.PostgresStorage
    for method in ("list_sessions", "end_session", "end_other_sessions", "end_all_sessions", "sweep", "sweeper"):
        assert inspect.getdoc(getattr(storage, method)), method
    # Every keyword argument of the storage is explained where it is defined.
    doc = inspect.getdoc(storage) or ""
    for parameter in list(inspect.signature(storage.__init__).parameters)[2:]:
        assert f"{parameter}:" in doc or f"{parameter}," in doc, f"PostgresStorage's docstring lacks {parameter}"


def test_the_wheel_holds_the_library_alone(library_wheel: Path) -> None:
    names = zipfile.ZipFile(library_wheel).namelist()
    packages = {name.split("/")[0] for name in names}
    assert packages == {
        "aiohttp_session_postgres",
        f"aiohttp_session_postgres-{aiohttp_session_postgres.__version__}.dist-info",
    }
    for needed in ("py.typed", "schema.sql", "alembic_versions/aiohttp_session_pg_0001_sessions.py", "__init__.py"):
        assert f"aiohttp_session_postgres/{needed}" in names, needed
    assert library_wheel.name.startswith(f"aiohttp_session_postgres-{aiohttp_session_postgres.__version__}-")
    metadata = zipfile.ZipFile(library_wheel).read(
        f"aiohttp_session_postgres-{aiohttp_session_postgres.__version__}.dist-info/METADATA"
    )
    assert b"Requires-Python: >=3.11" in metadata
    for dependency in (b"aiohttp", b"aiohttp-session", b"asyncpg", b"cryptography", b"orjson"):
        assert b"Requires-Dist: " + dependency in metadata
    # The optional extras, each with what it brings.
    assert b"Provides-Extra: security" in metadata
    assert b'Requires-Dist: aiohttp-security>=0.5; extra == "security"' in metadata
    assert b"Provides-Extra: metrics" in metadata
    assert b'Requires-Dist: prometheus-client>=0.20; extra == "metrics"' in metadata


PROBE = """
import sys, aiohttp_session_postgres as lib
from importlib import resources
assert "/venv" in lib.__file__ and "site-packages" in lib.__file__, lib.__file__
assert resources.files(lib).joinpath("py.typed").is_file()
sql = lib.schema_sql(table="web_sessions", schema="shop")
assert '"shop"."web_sessions"' in sql
print(lib.__version__)
"""


@pytest.mark.parametrize("source", ["wheel", "checkout"])
def test_pip_install_into_a_fresh_venv_works(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    python: Path = request.getfixturevalue(f"{source}_python")
    result = run_in(python, tmp_path, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == aiohttp_session_postgres.__version__
    # The [security] extra's module, installed without the extra, says what to install.
    result = run_in(python, tmp_path, "-c", "import aiohttp_session_postgres.security")
    assert result.returncode == 1
    assert "pip install 'aiohttp-session-postgres[security]'" in result.stderr, result.stderr
    # So does the [metrics] extra's, and the package imports without it (hooks need nothing more).
    for probe in ("import aiohttp_session_postgres.metrics", "from aiohttp_session_postgres import PrometheusMetrics"):
        result = run_in(python, tmp_path, "-c", probe)
        assert result.returncode == 1
        assert "pip install 'aiohttp-session-postgres[metrics]'" in result.stderr, result.stderr
    result = run_in(python, tmp_path, "-c", "from aiohttp_session_postgres import SessionEvent, StorageMetrics")
    assert result.returncode == 0, result.stderr
    # The command that prints the SQL for psql.
    result = run_in(python, tmp_path, "-m", "aiohttp_session_postgres", "schema", "--table", "t1")
    assert result.returncode == 0, result.stderr
    # The SQL in one transaction, so that psql (which goes on past an error) leaves nothing half
    # made; then the index PostgreSQL builds CONCURRENTLY only outside a transaction block.
    transactional, outside = split_schema_sql(aiohttp_session_postgres.schema_sql("t1"))
    assert result.stdout == f"BEGIN;\n{transactional}COMMIT;\n\n{outside}"
    assert outside.startswith("-- Outside a transaction block")
    assert outside.rstrip().endswith(
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "t1_principal_idx" ON "public"."t1"'
        " (principal) WHERE principal IS NOT NULL;"
    )
    result = run_in(python, tmp_path, "-m", "aiohttp_session_postgres", "schema", "--table", "bad-name")
    assert result.returncode == 1
    assert result.stderr.startswith("error: table name 'bad-name' must be a plain identifier"), result.stderr
