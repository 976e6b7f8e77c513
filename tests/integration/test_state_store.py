"""state.db: real SQLite, migrations applied once, WAL + foreign keys, read-only diagnostics never migrate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from banger.errors import StoreError
from banger.store.db import LATEST, open_db, open_readonly, schema_version
from banger.store.migrations import MIGRATIONS
from banger.testing.daemon import Home


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()


def test_daemon_applies_migrations_once(home: Home) -> None:
    home.cli("vm", "list", check=True)
    first = _rows(home.layout.db)
    assert [r[0] for r in first] == [m[0] for m in MIGRATIONS]
    home.stop_daemon()
    home.cli("vm", "list", check=True)  # a new daemon re-opens the same file
    assert _rows(home.layout.db) == first, "re-open must not re-apply or re-stamp migrations"
    with sqlite3.connect(home.layout.db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"vms", "images", "kernels", "schema_migrations"} <= tables


def test_vm_columns_hold_spec_state_ip_paths_workspace(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "state.db")
    cols = {r[1] for r in conn.execute("PRAGMA table_info(vms)")}
    assert {"spec", "state", "ip", "vm_dir", "workspace", "runtime"} <= cols
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):  # state is constrained
        conn.execute("INSERT INTO images (name, dir, created_at) VALUES ('i', '/x', 'now')")
        conn.execute("INSERT INTO vms (id, name, spec, state, vm_dir, image, created_at, updated_at, touched_at)"
                     " VALUES ('1', 'a', '{}', 'flying', '/d', 'i', 'n', 'n', 'n')")
    with pytest.raises(sqlite3.IntegrityError):  # an image in use cannot vanish under a VM
        conn.execute("INSERT INTO vms (id, name, spec, state, vm_dir, image, created_at, updated_at, touched_at)"
                     " VALUES ('1', 'a', '{}', 'created', '/d', 'i', 'n', 'n', 'n')")
        conn.execute("DELETE FROM images WHERE name = 'i'")


def test_each_migration_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import banger.store.db as db

    # A migration whose second statement fails must leave neither its first statement nor its stamp.
    broken = [*MIGRATIONS, (LATEST + 1, "broken", "CREATE TABLE half (x); CREATE TABLE half (y)")]
    conn = open_db(tmp_path / "state.db")
    monkeypatch.setattr(db, "MIGRATIONS", broken)
    monkeypatch.setattr(db, "LATEST", LATEST + 1)
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(conn)
    assert schema_version(conn) == LATEST
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None


def test_readonly_open_never_creates_or_migrates(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with pytest.raises(StoreError, match="does not exist yet"):
        open_readonly(path)
    assert not path.exists()
    sqlite3.connect(path).close()  # an empty, unmigrated database
    ro = open_readonly(path)
    assert schema_version(ro) == 0
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("CREATE TABLE x (y)")
    ro.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "state.db")
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    conn.close()
    with pytest.raises(StoreError, match="newer than this banger"):
        open_db(tmp_path / "state.db")
