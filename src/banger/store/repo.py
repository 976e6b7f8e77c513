"""Typed reads and writes of the vms, images, kernels and settings tables."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from banger.errors import AlreadyExists, NotFound, StoreError
from banger.model import VM, Image, Kernel, VMSpec, Workspace, now


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


class Store:
    """All SQL lives here; services call these methods and never write SQL themselves."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    # --- VMs ----------------------------------------------------------------------------------------

    def _vm(self, row: sqlite3.Row) -> VM:
        return VM(
            id=row["id"],
            name=row["name"],
            spec=VMSpec.model_validate_json(row["spec"]),
            state=row["state"],
            runtime=row["runtime"],
            ip=row["ip"],
            mac=row["mac"],
            vm_dir=row["vm_dir"],
            reason=row["reason"],
            workspace=Workspace.model_validate_json(row["workspace"]) if row["workspace"] else None,
            creating=bool(row["creating"]),
            created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]),
            touched_at=_ts(row["touched_at"]),
        )

    def list_vms(self) -> list[VM]:
        return [self._vm(r) for r in self.conn.execute("SELECT * FROM vms ORDER BY created_at, name")]

    def find_vm(self, ref: str) -> VM | None:
        row = self.conn.execute("SELECT * FROM vms WHERE name = ? OR id = ?", (ref, ref)).fetchone()
        return self._vm(row) if row else None

    def get_vm(self, ref: str) -> VM:
        vm = self.find_vm(ref)
        if vm is None:
            raise NotFound(f"no VM named {ref!r}", hint="`banger vm list` shows the VMs that exist")
        return vm

    def insert_vm(self, vm: VM) -> None:
        try:
            self.conn.execute(
                "INSERT INTO vms (id, name, spec, state, runtime, ip, mac, vm_dir, reason, workspace, image,"
                " creating, created_at, updated_at, touched_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    vm.id, vm.name, vm.spec.model_dump_json(), vm.state, vm.runtime, vm.ip, vm.mac,
                    vm.vm_dir, vm.reason, vm.workspace.model_dump_json() if vm.workspace else None,
                    vm.spec.image, int(vm.creating), vm.created_at.isoformat(), vm.updated_at.isoformat(),
                    vm.touched_at.isoformat(),
                ),
            )
        except sqlite3.IntegrityError as exc:
            if "vms.name" in str(exc):
                raise AlreadyExists(f"a VM named {vm.name!r} already exists",
                                    hint="pick another --name or delete the old VM") from exc
            raise StoreError(f"cannot record VM {vm.name!r}: {exc}") from exc

    def update_vm(self, vm: VM, **changes: Any) -> VM:
        """Persist ``changes`` (model field names) and return the updated VM."""
        updated = vm.model_copy(update={**changes, "updated_at": now()})
        self.conn.execute(
            "UPDATE vms SET spec=?, state=?, runtime=?, ip=?, mac=?, reason=?, workspace=?, creating=?, updated_at=?,"
            " touched_at=? WHERE id=?",
            (
                updated.spec.model_dump_json(), updated.state, updated.runtime, updated.ip, updated.mac,
                updated.reason, updated.workspace.model_dump_json() if updated.workspace else None,
                int(updated.creating), updated.updated_at.isoformat(), updated.touched_at.isoformat(), vm.id,
            ),
        )
        return updated

    def delete_vm(self, vm_id: str) -> None:
        self.conn.execute("DELETE FROM vms WHERE id = ?", (vm_id,))

    def taken_ips(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT ip FROM vms WHERE ip IS NOT NULL")}

    def vm_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT state, count(*) FROM vms GROUP BY state")}

    def vms_using_image(self, name: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM vms WHERE image = ?", (name,))]

    # --- images -------------------------------------------------------------------------------------

    def _image(self, row: sqlite3.Row) -> Image:
        return Image(
            name=row["name"], distro=row["distro"], arch=row["arch"], kernel_ref=row["kernel_ref"],
            source=row["source"], dir=row["dir"], rootfs_size=row["rootfs_size"],
            manifest=json.loads(row["manifest"]), created_at=_ts(row["created_at"]),
        )

    def list_images(self) -> list[Image]:
        return [self._image(r) for r in self.conn.execute("SELECT * FROM images ORDER BY name")]

    def find_image(self, name: str) -> Image | None:
        row = self.conn.execute("SELECT * FROM images WHERE name = ?", (name,)).fetchone()
        return self._image(row) if row else None

    def put_image(self, image: Image) -> None:
        """Insert or replace an image row (a forced rebuild replaces it)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO images (name, distro, arch, kernel_ref, source, dir, rootfs_size, manifest,"
            " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                image.name, image.distro, image.arch, image.kernel_ref, image.source, image.dir,
                image.rootfs_size, json.dumps(image.manifest, default=str), image.created_at.isoformat(),
            ),
        )

    def delete_image(self, name: str) -> None:
        self.conn.execute("DELETE FROM images WHERE name = ?", (name,))

    # --- kernels ------------------------------------------------------------------------------------

    def _kernel(self, row: sqlite3.Row) -> Kernel:
        return Kernel(
            name=row["name"], version=row["version"], dir=row["dir"], source=row["source"],
            manifest=json.loads(row["manifest"]), created_at=_ts(row["created_at"]),
        )

    def list_kernels(self) -> list[Kernel]:
        return [self._kernel(r) for r in self.conn.execute("SELECT * FROM kernels ORDER BY name")]

    def find_kernel(self, name: str) -> Kernel | None:
        row = self.conn.execute("SELECT * FROM kernels WHERE name = ?", (name,)).fetchone()
        return self._kernel(row) if row else None

    def put_kernel(self, kernel: Kernel) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO kernels (name, version, dir, source, manifest, created_at)"
            " VALUES (?,?,?,?,?,?)",
            (
                kernel.name, kernel.version, kernel.dir, kernel.source,
                json.dumps(kernel.manifest, default=str), kernel.created_at.isoformat(),
            ),
        )

    def delete_kernel(self, name: str) -> None:
        self.conn.execute("DELETE FROM kernels WHERE name = ?", (name,))

    # --- settings -----------------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))
