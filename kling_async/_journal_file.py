"""The journal's SQLite file: made whole or not at all, checked before use, locked while open.

A new journal is built beside its path and linked into place; an existing file is opened only
when its header, application id, schema version and pages say it is a journal this version
can read. SQLite's errors are told in words a person can act on.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from ._journal_entry import JournalError, not_a_journal

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "connect", "explain"]

#: "KLNG", written into the SQLite header: tells a journal from any other SQLite file.
APPLICATION_ID = 0x4B4C4E47
#: Raised on any change of `_SCHEMA`; a journal from a newer version is refused, not guessed at.
SCHEMA_VERSION = 1

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Only another process can hold the lock (see `_prepare`), and it holds it for a whole run:
# waiting longer than a moment would not help.
_BUSY_TIMEOUT = 1.0

_SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
CREATE TABLE entry (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('intent', 'submitted', 'finished')),
    task_id TEXT,
    task_kind TEXT,
    task_status TEXT,
    task_raw TEXT,
    error_type TEXT,
    error_message TEXT,
    updated_at REAL NOT NULL
) STRICT;
"""


def connect(path: Path) -> sqlite3.Connection:
    """The journal at `path`, created when absent, checked and locked for this process."""
    if not path.parent.is_dir():
        raise JournalError(
            path,
            f"The journal {path} cannot be created: its directory {path.parent} does not "
            "exist; create it or pass another --journal.",
        )
    if not path.exists():
        _create(path)
    _check_header(path)
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    try:
        _prepare(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _create(path: Path) -> None:
    """Build a new journal beside `path`, then link it into place.

    A journal file is then complete or absent, never half made, so an empty or schema-less
    file at `path` is always damage (a truncated journal, another program's file) and is
    refused rather than silently started afresh, which would submit everything again.
    """
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        # SQLite would replay it into the new file: it belongs to a journal that was removed.
        raise JournalError(
            path,
            f"{wal} is left from a journal that is gone and may hold recorded tasks; "
            f"restore {path.name} beside it, or move it away.",
        )
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute("PRAGMA journal_mode = WAL")  # persistent: kept in the file's header
        finally:
            db.close()
        try:
            os.link(temporary, path)  # unlike a rename, never replaces a journal made meanwhile
        except FileExistsError:
            pass  # another run created it first: open that one
        except OSError:
            os.replace(temporary, path)  # a filesystem without hard links
    finally:
        Path(temporary).unlink(missing_ok=True)


def _check_header(path: Path) -> None:
    # SQLite would take an empty file for a new database; and its own word for a foreign
    # file ("file is not a database") says less than this.
    with path.open("rb") as file:
        head = file.read(len(_SQLITE_MAGIC))
    if not head:
        raise not_a_journal(path, "the file is empty")
    if head != _SQLITE_MAGIC:
        raise not_a_journal(path, "not an SQLite database")


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Check that `db` is a journal this version can read, then set it up and lock it."""
    # Exclusive locking keeps the file locked for as long as this connection lives: a second
    # run over the same journal is refused instead of submitting the same requests again.
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    if application_id != APPLICATION_ID:
        raise not_a_journal(path, "an SQLite database of another application")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            path,
            f"The journal {path} was written by a newer kling_async (journal schema "
            f"{version}; this version reads up to {SCHEMA_VERSION}); upgrade kling_async to "
            "resume it, or pass another --journal.",
        )
    if version < 1:
        raise not_a_journal(path, "it has no schema version")
    # Reads every page (cheap for a batch's journal): a truncated or damaged file is refused
    # now, not found out halfway through a run.
    verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
        raise not_a_journal(path, f"it is damaged: {verdict}")
    db.execute("PRAGMA journal_mode = WAL")
    # In WAL mode a commit is an append to the -wal file; NORMAL skips the fsync at each
    # commit. A committed transaction then survives the process being killed (the data is in
    # the operating system's hands) but may be lost if the machine itself loses power before
    # the next checkpoint. That is the failure a batch re-run guards against, at a fraction
    # of FULL's cost for ~8000 commits per 2000 requests.
    db.execute("PRAGMA synchronous = NORMAL")
    # The first write takes the exclusive lock, so a second run fails here, at open.
    db.execute("BEGIN IMMEDIATE")
    db.execute("COMMIT")


def _in_use(path: Path, reason: str) -> JournalError:
    return JournalError(
        path,
        f"The journal {path} is in use by another process ({reason}); let that run finish, "
        "or pass another --journal.",
    )


# SQLite's primary result codes that mean something the user can act on.
_BY_SQLITE_CODE: Mapping[int, Callable[[Path, str], JournalError]] = {
    sqlite3.SQLITE_CORRUPT: not_a_journal,
    sqlite3.SQLITE_NOTADB: not_a_journal,
    sqlite3.SQLITE_BUSY: _in_use,
    sqlite3.SQLITE_LOCKED: _in_use,
}


def explain(path: Path, exc: sqlite3.Error, doing: str) -> JournalError:
    """SQLite's error while the journal was being `doing`, told as what to do about it."""
    code = exc.sqlite_errorcode & 0xFF  # extended codes carry it in the low byte
    if code in _BY_SQLITE_CODE:
        return _BY_SQLITE_CODE[code](path, str(exc))
    return JournalError(
        path,
        f"The journal {path} could not be {doing} ({exc}); check free disk space and that "
        "the file is readable and writable, then run again.",
    )
