"""Per-VM files the daemon keeps beside the disks: ``disks.json`` (durable) and ``handles.json`` (while running).

``handles.json`` is how a restarted daemon finds the VMM process, TAP and NAT rules of a VM it did not
start itself; it is written right after the VMM launches and removed once everything is released.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.files import write_atomic
from banger.host.storage import RootDisk
from banger.host.vmm import Handle

HANDLES = "handles.json"
DISKS = "disks.json"
WORK_DISK = "work.ext4"


@dataclass
class Handles:
    """What a running VM holds on the host."""

    vmm: Handle
    tap: str
    nat: bool
    accel: str = "tcg"

    def to_json(self) -> dict[str, Any]:
        return {"vmm": self.vmm.to_json(), "tap": self.tap, "nat": self.nat, "accel": self.accel}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Handles:
        return cls(Handle.from_json(data["vmm"]), data["tap"], bool(data["nat"]), data.get("accel", "tcg"))


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2).encode(), 0o600)


def write_handles(vm_dir: Path, handles: Handles) -> None:
    _write_atomic(vm_dir / HANDLES, handles.to_json())


def read_handles(vm_dir: Path) -> Handles | None:
    """The handles of a VM that was running, or None (missing or unreadable: nothing to adopt)."""
    try:
        return Handles.from_json(json.loads((vm_dir / HANDLES).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_handles(vm_dir: Path) -> None:
    (vm_dir / HANDLES).unlink(missing_ok=True)


def write_root_disk(vm_dir: Path, disk: RootDisk) -> None:
    _write_atomic(vm_dir / DISKS, {"root": disk.to_json()})


def read_root_disk(vm_dir: Path) -> RootDisk | None:
    try:
        return RootDisk.from_json(json.loads((vm_dir / DISKS).read_text())["root"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
