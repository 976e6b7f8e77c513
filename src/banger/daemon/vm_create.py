"""Creating a VM in three phases: reserve (milliseconds, under the create lock), build disks, start.

Phase 1 inserts the row with ``creating=1`` so a daemon killed mid-create knows, on restart, to undo the
rest (see ``reconcile``). Phases 2 and 3 run under the VM's own lock with an undo stack; a failure or a
cancel removes the VMM, TAP, NAT rules, disks, directory and row.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from banger import api, ipam
from banger.bounds import MIN_DISK, parse_size
from banger.daemon.vm_handles import (
    CLONE_WORK_DISK,
    DISKS,
    WORK_DISK,
    WorkDisk,
    read_root_disk,
    write_root_disk,
)
from banger.errors import InvalidArgument
from banger.host import storage
from banger.host.privileged import Privileged
from banger.model import VM, Image, Kernel, VMSpec
from banger.names import generate_vm_name, validate_name


@dataclass(frozen=True)
class Resolved:
    """What phase 1 settled: the spec, image and kernel to use."""

    spec: VMSpec
    image: Image
    kernel: Kernel


def build_spec(req: api.VMCreate, defaults: VMSpec, image: str, runtime: str) -> VMSpec:
    """The VM's spec from the request and the configured defaults (pure)."""
    try:
        disk = parse_size(req.disk_size) if req.disk_size else defaults.disk_size
    except ValueError as exc:
        raise InvalidArgument(f"--disk-size: {exc}") from exc
    if disk < MIN_DISK:
        raise InvalidArgument(f"--disk-size {req.disk_size} is too small", hint="use at least 256M")
    return defaults.model_copy(update={
        "vcpu": req.vcpu or defaults.vcpu,
        "memory_mib": req.memory_mib or defaults.memory_mib,
        "disk_size": disk,
        "image": image,
        "kernel": req.kernel or "",
        "runtime": req.runtime or runtime,
        "nat": req.nat,
    })


def new_vm(name: str | None, spec: VMSpec, taken_names: set[str], ip: str, vms_dir: Path) -> VM:
    """The row for a new VM (pure apart from the random id)."""
    vm_id = secrets.token_hex(6)
    name = validate_name("vm", name) if name else generate_vm_name(taken_names, secrets.token_bytes(2))
    return VM(id=vm_id, name=name, spec=spec, state="created", ip=ip, mac=ipam.mac_for(vm_id),
              vm_dir=str(vms_dir / vm_id))


async def make_disks(vm: VM, image: Image, priv: Privileged) -> None:
    """Root (copy-on-write over the image) and work disk (from the image's work seed) in the VM dir."""
    vm_dir = Path(vm.vm_dir)
    image_dir = Path(image.dir)
    strategy = await storage.cow_for_host(vm.runtime or "qemu", vm_dir)
    async with contextlib.AsyncExitStack() as undo:
        root = await storage.make_root_disk(strategy, image_dir / "rootfs.ext4", vm_dir, vm.spec.system_overlay_size,
                                          priv=priv)
        undo.push_async_callback(functools.partial(storage.release_root_disk, root, priv=priv))
        write_root_disk(vm_dir, root)
        await storage.make_work_disk(image_dir / "work-seed.ext4", vm_dir / WORK_DISK, vm.spec.disk_size)
        undo.pop_all()


async def make_clone_disks(vm: VM, template_dir: Path, template: str) -> tuple[Path, Path]:
    """A clone's root and work disk: qcow2 overlays over its template's frozen ones (milliseconds)."""
    vm_dir = Path(vm.vm_dir)
    vm_dir.mkdir(parents=True, exist_ok=True)
    root, work = vm_dir / "root.qcow2", vm_dir / CLONE_WORK_DISK
    async with contextlib.AsyncExitStack() as undo:
        await storage.make_overlay(template_dir / "root.qcow2", "qcow2", root)
        undo.callback(root.unlink, missing_ok=True)
        await storage.make_overlay(template_dir / "work.ext4", "raw", work)
        undo.callback(work.unlink, missing_ok=True)
        write_root_disk(vm_dir, storage.RootDisk(root, "qcow2", "qcow2", files=(root,)),
                        WorkDisk(work, "qcow2", template))
        undo.pop_all()
    return root, work


async def remove_disks(vm: VM, priv: Privileged, *, keep_dir: bool = False) -> None:
    """Release the root disk's devices and delete the VM directory (idempotent); ``keep_dir`` removes only
    the disks (a failed clone that boots cold next keeps its pinned host key)."""
    vm_dir = Path(vm.vm_dir)
    root = read_root_disk(vm_dir)
    try:
        if root is not None:
            await storage.release_root_disk(root, priv=priv)
    finally:
        if keep_dir:
            for name in (DISKS, WORK_DISK, CLONE_WORK_DISK, "root.qcow2"):
                (vm_dir / name).unlink(missing_ok=True)
        else:
            shutil.rmtree(vm_dir, ignore_errors=True)
