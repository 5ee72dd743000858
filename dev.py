#!/usr/bin/env python3
"""Task runner: sets up .venv with everything needed, then runs the task.

    python3 dev.py run [ARGS]    run the app (python -m app ARGS; default: serve)
    python3 dev.py alembic ARGS  run Alembic on DATABASE_URL (e.g. upgrade head)
    python3 dev.py test [ARGS]   lint, then the whole test suite (pytest ARGS)
    python3 dev.py bench [ARGS]  the session-store benchmark (bench/README.md; --quick, --scenarios 1,2)
    python3 dev.py mutants [ARGS]  mutation testing of the store's core modules (tests/MUTANTS.md)

Needs only Python 3.11+. Packages are (re)installed when requirements*.txt change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):
        print(f"error: Python 3.11 or newer is needed, this is {sys.version.split()[0]}", file=sys.stderr)
        return 1
    if not argv or argv[0] not in TASKS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    python = ensure_venv()
    return TASKS[argv[0]](python, argv[1:])


def ensure_venv() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        print("dev.py: creating .venv", file=sys.stderr)
        try:
            venv.create(VENV, with_pip=True, clear=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"error: could not create .venv ({exc}); on Debian/Ubuntu: apt-get install python3-venv")
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in REQUIREMENTS)).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print("dev.py: installing requirements into .venv", file=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-r", str(ROOT / "requirements-dev.txt")], check=True)
        stamp.write_text(digest)
    return str(python)


def run(python: str, args: list[str]) -> int:
    # exec, not a child: SIGTERM/SIGINT reach the app directly and it shuts down cleanly.
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "app", *args])


def alembic(python: str, args: list[str]) -> int:
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "alembic", *args])


def test(python: str, args: list[str]) -> int:
    lint = subprocess.call([python, "-m", "ruff", "check", "--quiet", "."], cwd=ROOT)
    if lint:
        print("dev.py: ruff found problems (above)", file=sys.stderr)
        return lint
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "pytest", *args])


def bench(python: str, args: list[str]) -> int:
    # Benchmark-only packages (Redis client, matplotlib) go into .venv beside the app's, never
    # into requirements*.txt.
    stamp = VENV / ".bench-requirements.sha256"
    requirements = ROOT / "bench" / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes() + (ROOT / "requirements.txt").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print("dev.py: installing bench/requirements.txt into .venv", file=sys.stderr)
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        stamp.write_text(digest)
    os.chdir(ROOT)
    os.execv(python, [python, "-m", "bench", *args])


def mutants(python: str, args: list[str]) -> int:
    os.chdir(ROOT)
    return subprocess.call([python, str(ROOT / "tests" / "mutants.py"), *args])


TASKS = {"run": run, "alembic": alembic, "test": test, "bench": bench, "mutants": mutants}

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
