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
from banger.host.storage import DiskFormat, RootDisk
from banger.host.vmm import Handle

HANDLES = "handles.json"
DISKS = "disks.json"
WORK_DISK = "work.ext4"
WORKSPACE_DISK = "workspace.ext4"  # the workspace slot: a repo image built on the host, or blank (sparse)
CLONE_WORK_DISK = "work.qcow2"  # a clone's work disk: an overlay over its template's (see daemon.templates)


@dataclass
class Handles:
    """What a running VM holds on the host."""

    vmm: Handle
    tap: str
    nat: bool
    accel: str = "tcg"
    agent: bool = True  # the guest's image carries banger-agent (a first command may wait for it to start)

    def to_json(self) -> dict[str, Any]:
        return {"vmm": self.vmm.to_json(), "tap": self.tap, "nat": self.nat, "accel": self.accel, "agent": self.agent}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Handles:
        return cls(Handle.from_json(data["vmm"]), data["tap"], bool(data["nat"]), data.get("accel", "tcg"),
                   bool(data.get("agent", True)))


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


@dataclass(frozen=True)
class WorkDisk:
    """The VM's work disk: raw for a VM made from an image, a qcow2 overlay for a template's clone."""

    path: Path
    format: DiskFormat = "raw"
    template: str | None = None  # the snapshot template whose disks back this VM's (clones only)


def write_root_disk(vm_dir: Path, disk: RootDisk, work: WorkDisk | None = None) -> None:
    data: dict[str, Any] = {"root": disk.to_json()}
    if work is not None:
        data["work"] = {"path": str(work.path), "format": work.format, "template": work.template}
    _write_atomic(vm_dir / DISKS, data)


def read_work_disk(vm_dir: Path) -> WorkDisk:
    """The work disk of the VM in ``vm_dir`` (``work.ext4``, raw, for every VM that is not a clone)."""
    try:
        work = json.loads((vm_dir / DISKS).read_text())["work"]
        return WorkDisk(Path(work["path"]), "qcow2" if work["format"] == "qcow2" else "raw", work.get("template"))
    except (OSError, ValueError, KeyError, TypeError):
        return WorkDisk(vm_dir / WORK_DISK)


def read_root_disk(vm_dir: Path) -> RootDisk | None:
    try:
        return RootDisk.from_json(json.loads((vm_dir / DISKS).read_text())["root"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
