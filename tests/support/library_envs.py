"""The library as an outsider gets it: a wheel built from this checkout, and fresh virtual
environments (outside the checkout) into which `pip install` puts it, from the wheel or from the
checkout's path, with its dependencies from the package index.

Programs run there start in their own temporary folder, so nothing of this checkout is on their
import path: what they import is what was installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from support.paths import REPO_ROOT

PIP_TIMEOUT = 600


def clean_env(**values: str) -> dict[str, str]:
    """os.environ without anything that would put this checkout (or the dev venv) on a path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(values)
    return env


def remove_build_leftovers() -> None:
    """setuptools builds in the source tree (build/, *.egg-info/): a stale build/ would put files
    of an earlier build into the next wheel. Both are git-ignored; they go before and after."""
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)
    for leftover in REPO_ROOT.glob("*.egg-info"):
        shutil.rmtree(leftover, ignore_errors=True)


def build_wheel(out_dir: Path) -> Path:
    """`python -m pip wheel --no-deps <checkout>`: the library's wheel, built as a user builds it."""
    remove_build_leftovers()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-w",
            out_dir,
            REPO_ROOT,
        ],
        check=True,
        timeout=PIP_TIMEOUT,
        cwd=out_dir,
        env=clean_env(),
    )
    remove_build_leftovers()
    (wheel,) = out_dir.glob("aiohttp_session_postgres-*.whl")
    return wheel


def fresh_venv(path: Path, *requirements: str) -> Path:
    """A new virtual environment at `path` with `pip install REQUIREMENTS`; its python."""
    venv.create(path, with_pip=True, clear=True)
    python = path / "bin" / "python"
    remove_build_leftovers()
    try:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
            check=True,
            timeout=PIP_TIMEOUT,
            cwd=path,
            env=clean_env(),
        )
    finally:
        remove_build_leftovers()
    return python


def run_in(python: Path, cwd: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in `cwd`, outside the checkout, to completion."""
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Program:
    """`python SCRIPT` serving HTTP on 127.0.0.1:`port`, started outside the checkout; its output
    goes to a file (never a pipe, which a busy program could fill)."""

    def __init__(self, python: Path, cwd: Path, script: str, port: int, **env: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"program-{port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(python), script],
                cwd=cwd,
                env=clean_env(PORT=str(port), **env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, path: str = "/", timeout: float = 30.0) -> Program:
        """Wait until `path` answers at all (any status); fail with the output if it exits."""
        import aiohttp

        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while asyncio.get_running_loop().time() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.url} exited ({self.proc.returncode}):\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + path):
                        return self
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.url} did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> str:
        """SIGTERM, wait, and the output."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.log()
