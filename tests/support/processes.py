"""Real clipdex processes for crash and concurrency tests."""

from pathlib import Path

INDEXER = "from search.cli import app; app()"


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
