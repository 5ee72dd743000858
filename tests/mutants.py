"""`python3 dev.py mutants [MUTANT ...]`: mutation testing of the store's core modules with
mutmut (its settings: pyproject.toml, [tool.mutmut]).

mutmut changes the code one small edit at a time (a comparison flipped, a constant changed, a
call dropped) and runs the tests that cover the changed function; a mutant no test notices
"survives". Each survivor is either killed by a new test or explained in tests/MUTANTS.md.

PostgreSQL: the one DATABASE_URL (or TEST_DATABASE_URL) names, else one embedded PostgreSQL
started here for the whole run (the tests would otherwise start one per mutant). MUTANT
arguments narrow the run, e.g. `"aiohttp_session_postgres.cipher*"`. Results are kept in
mutants/: a rerun runs the clean tests once more, then only mutants of functions that changed;
`.venv/bin/mutmut show NAME` shows one mutant's diff.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    mutmut = str(Path(sys.executable).parent / "mutmut")
    env = dict(os.environ)
    server = None
    if not (env.get("TEST_DATABASE_URL") or env.get("DATABASE_URL")):
        sys.path[:0] = [str(ROOT / "tests")]  # the tests' helpers: support.postgres
        from support.postgres import start_embedded

        server = start_embedded("pgmutants-")
        env["TEST_DATABASE_URL"] = server.get_uri()  # type: ignore[attr-defined]
    began = time.monotonic()
    try:
        run = subprocess.call([mutmut, "run", *argv], cwd=ROOT, env=env)
    finally:
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]
    minutes = (time.monotonic() - began) / 60
    if run != 0:
        # mutmut first runs the tests without mutants: they must pass before any mutant means anything.
        print(f"\nmutants: mutmut failed (exit {run}) after {minutes:.0f} min; see above", file=sys.stderr)
        return run
    results = subprocess.run([mutmut, "results"], cwd=ROOT, env=env, capture_output=True, text=True)
    # mutmut lists every mutant not killed, those outside this run's selection ("not checked")
    # too: only what this run found is shown.
    found = [line.strip() for line in results.stdout.splitlines() if ": " in line and "not checked" not in line]
    print("\n".join(found))
    print(
        f"\nmutants: {sum(line.endswith(': survived') for line in found)} survived, {len(found)} not killed in all,"
        f" in {minutes:.0f} min; tests/MUTANTS.md says which are explained and which tests killed them since"
    )
    return run


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
