"""The schema, as an ordered list of migrations; append only, never edit a released one."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "vms, images, kernels",
        """
        CREATE TABLE kernels (
            name        TEXT PRIMARY KEY,
            version     TEXT NOT NULL DEFAULT '',
            dir         TEXT NOT NULL,
            source      TEXT NOT NULL DEFAULT '',
            manifest    TEXT NOT NULL DEFAULT '{}',
            created_at  TEXT NOT NULL
        );
        CREATE TABLE images (
            name        TEXT PRIMARY KEY,
            distro      TEXT NOT NULL DEFAULT '',
            arch        TEXT NOT NULL DEFAULT 'x86_64',
            kernel_ref  TEXT NOT NULL DEFAULT '',
            source      TEXT NOT NULL DEFAULT '',
            dir         TEXT NOT NULL,
            rootfs_size INTEGER NOT NULL DEFAULT 0,
            manifest    TEXT NOT NULL DEFAULT '{}',
            created_at  TEXT NOT NULL
        );
        CREATE TABLE vms (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            spec        TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('created', 'running', 'stopped', 'error')),
            runtime     TEXT,
            ip          TEXT UNIQUE,
            mac         TEXT,
            vm_dir      TEXT NOT NULL,
            reason      TEXT,
            workspace   TEXT,
            image       TEXT NOT NULL REFERENCES images(name) ON DELETE RESTRICT,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            touched_at  TEXT NOT NULL
        );
        CREATE INDEX vms_state ON vms(state);
        """,
    ),
    (
        2,
        "settings (default image and other daemon-owned choices)",
        """
        CREATE TABLE settings (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
    (
        3,
        "vms.creating marks rows whose create has not finished (undone at daemon start)",
        """
        ALTER TABLE vms ADD COLUMN creating INTEGER NOT NULL DEFAULT 0;
        """,
    ),
]
