"""Opening state.db: WAL, foreign keys, busy timeout, versioned migrations, and a read-only mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from banger.errors import StoreError
from banger.store.migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 5000
LATEST = MIGRATIONS[-1][0]


def _configure(conn: sqlite3.Connection) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate ``path``; returns an autocommit connection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        _configure(conn)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn)
    except sqlite3.Error as exc:
        raise StoreError(
            f"cannot open state database {path}: {exc}",
            hint="check the file's permissions and free disk space; `banger doctor` inspects it read-only",
        ) from exc
    return conn


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open for diagnostics: never creates, never migrates, never writes."""
    if not path.exists():
        raise StoreError(f"state database {path} does not exist yet", hint="it is created when bangerd first starts")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        _configure(conn)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read state database {path}: {exc}") from exc
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """Highest applied migration, 0 for a fresh database."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
    ).fetchone()
    if row is None:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations, each in its own transaction; returns the versions applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    current = schema_version(conn)
    if current > LATEST:
        raise StoreError(
            f"state database schema version {current} is newer than this banger understands ({LATEST})",
            hint="upgrade banger; a downgrade cannot read this state",
        )
    applied = []
    for version, name, sql in MIGRATIONS:
        if version <= current:
            continue
        with transaction(conn):
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, datetime.now(UTC).isoformat()),
            )
        applied.append(version)
    return applied


def _statements(sql: str) -> list[str]:
    # executescript() would COMMIT our transaction first, so split on ';' (no migration has ';' in strings).
    return [s.strip() for s in sql.split(";") if s.strip()]


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
