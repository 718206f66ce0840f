"""Errors a user can cause. Each message says what to do; the CLI and API translate them at the edge."""

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError


class ClipdexError(Exception):
    """Base class for errors caused by input, configuration or the state of a store."""


class StoreNotFoundError(ClipdexError):
    """The store directory does not exist or holds no store."""


class StoreFormatError(ClipdexError):
    """The store was written by a newer clipdex, or is damaged."""


class StoreConnectionError(ClipdexError):
    """A database store could not be reached: server down, wrong host, credentials or database name."""


class StoreBusyError(ClipdexError):
    """Another process kept the store's writer lock for longer than the timeout."""


class ModelMismatchError(ClipdexError):
    """A store was opened with another embedding model than the one it was built with."""


class ModelLoadError(ClipdexError):
    """A model id or directory could not be loaded as a supported model."""


class NotFoundError(ClipdexError):
    """An image id or path is not in the store."""


class BadInputError(ClipdexError):
    """A query or argument is malformed (empty text, bad k, unreadable query image...)."""


class StorageFullError(ClipdexError):
    """The disk has no room for what had to be written; nothing stored was lost."""


class GenerationError(ClipdexError):
    """A vision-language model failed while answering; the conversation stays as it was."""


def damage_message(e: BaseException) -> str | None:
    """What to tell the user when SQLite reports the store's database as damaged; None for other errors."""
    if isinstance(e, DatabaseError) and any(
        words in str(e) for words in ("malformed", "not a database", "disk I/O error", "file is not")
    ):
        return (
            f"the store's database is damaged ({str(e.orig) if e.orig else e}): restore clipdex.db from a "
            "backup, or index the folders again into a new --store"
        )
    return None


def driver_message(e: DBAPIError) -> str:
    """The database server's or driver's own words, on one line, without SQLAlchemy's statement and link."""
    message = str(e.orig if e.orig is not None else e).strip()
    return " ".join(message.splitlines()[0].split()) if message else type(e).__name__


def unreachable_message(e: BaseException) -> str | None:
    """What to tell the user when a database store's server went away mid-request; None for other errors."""
    if isinstance(e, OperationalError) and e.orig is not None and "connection" in str(e.orig).lower():
        return f"the store's database cannot be reached ({driver_message(e)}); try again when it is back"
    return None


def is_disk_full(e: BaseException) -> bool:
    """Whether an error from SQLite, FAISS or the filesystem means the disk (or quota) is full."""
    message = str(e).lower()
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        words in message for words in ("disk is full", "no space left", "quota exceeded")
    )


@contextmanager
def reporting_full_disk(path: Path) -> Iterator[None]:
    """A full disk while writing the store at `path` becomes one clear StorageFullError."""
    try:
        yield
    except (OperationalError, OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        raise StorageFullError(
            f"the disk holding {path} is full; nothing committed is lost (the last chunk was not written): "
            "free some space and run again to finish"
        ) from None
