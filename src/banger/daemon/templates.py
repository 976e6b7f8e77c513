"""TemplateService: snapshot templates, from which VMs start as clones in about a second.

A template is one cold boot of (image, kernel, vCPUs, memory, work disk size, runtime, VMM, agent),
waited on until systemd has finished starting everything, then paused and saved: its RAM stays in a
memory file (``share=on``) and only the device state (~100 kB) is written (QEMU ``x-ignore-shared``).
Its disks are frozen there too. A clone maps the memory file copy-on-write (``share=off``), gets qcow2
overlays over the frozen disks (milliseconds), loads the device state, and is re-homed by the guest
agent (``guest.rehome``) before its TAP filter lets a frame through.

On disk, ``<state>/templates/<key digest>/``: ``memory``, ``state``, ``root.qcow2`` (over the image's
rootfs), ``work.ext4``, ``config.ext4``, ``template.json`` (the key, the template's own address and
how long it took), plus the build's console and VMM logs. Nothing in it is written after the build, so
any number of clones can share it. A key that changes (new image, kernel, QEMU or agent) is a new
template; old ones are listed and pruned with ``banger vm templates``, and one a VM still stands on
(its overlays name the template's files) is kept.

Only QEMU clones for now; Firecracker boots cold. Locks: one per template key (``template`` KeyedLock),
taken inside the create path's VM lock and never around another service's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger import ipam
from banger.config import Config
from banger.daemon.locks import KeyedLock
from banger.daemon.network import NetworkService
from banger.daemon.vm_handles import DISKS, read_work_disk
from banger.daemon.vm_lifecycle import Lifecycle, workspace_slot
from banger.errors import GuestError, HostError, OperationTimeout
from banger.files import write_atomic
from banger.guest import ssh
from banger.guest.agent import AgentLink
from banger.host import run as host_run
from banger.host import storage
from banger.host.qemu import QemuVMM
from banger.host.vmm import Disk, Handle, LaunchSpec
from banger.images import agent as agent_build
from banger.images.local import staging
from banger.model import Image, Kernel, VMSpec, now
from banger.progress import Reporter

log = logging.getLogger("banger.daemon.templates")

MEMORY, STATE, ROOT, WORK, CONFIG, META = "memory", "state", "root.qcow2", "work.ext4", "config.ext4", "template.json"
FORMAT = 2  # bump when the template layout or the clone procedure changes
DETACH_SETTLE = 0.5  # seconds between closing the template's agent link and pausing it


@dataclass(frozen=True)
class TemplateKey:
    """Everything a clone inherits from its template: change any of it and the template is another one."""

    image: str
    image_dir: str
    image_rootfs_sha256: str
    kernel: str
    kernel_dir: str
    vcpu: int
    memory_mib: int
    disk_size: int
    runtime: str
    accel: str  # tcg or kvm: a template saved under one is loaded under the same
    vmm: str
    agent: str
    config: str  # Lifecycle.config_fingerprint: /root files, DNS, kernel arguments, network
    format: int = FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Template:
    """A finished template on disk."""

    dir: Path
    meta: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.dir.name

    def clone_spec(self, lifecycle: Lifecycle, image: Image, kernel: Kernel, vm_id: str, name: str,
                   vm_dir: Path, root: Path, work: Path) -> LaunchSpec:
        """The launch spec of a clone: the template's devices in the template's order over the clone's
        overlays, its memory file mapped copy-on-write and its device state loaded."""
        key = self.meta["key"]
        spec = lifecycle.boot_spec(
            vm_id, name, self.meta["ip"], self.meta["mac"], "qemu", image, kernel,
            disks=(Disk(root, format="qcow2"), Disk(work, format="qcow2")), config_disk=self.dir / CONFIG,
            workspace_disk=workspace_slot(vm_dir), tap="", vcpu=key["vcpu"], memory_mib=key["memory_mib"],
            vm_dir=vm_dir, accel=self.meta["accel"],
        )
        return _with_memory(spec, self.dir / MEMORY, shared=False, restore_from=self.dir / STATE)


def _with_memory(spec: LaunchSpec, memory: Path, *, shared: bool, restore_from: Path | None) -> LaunchSpec:
    return dataclasses.replace(spec, memory_file=memory, memory_shared=shared, restore_from=restore_from)


# QEMU's first start on a cold page cache loads an 18 MB binary and ~50 libraries: inside a nested KVM host
# under TCG that took over 10 s (seen in CI: a `--version` bounded at 10 s failed the whole create).
VERSION_TIMEOUT = 120.0


async def qemu_version(binary: str) -> str:
    """``qemu-system-x86_64 --version``'s first line (part of the key: device state is version-bound)."""
    try:
        out = await host_run.run([binary, "--version"], check=False, timeout=VERSION_TIMEOUT)
    except OperationTimeout as exc:
        raise HostError(f"{binary} --version did not answer within {VERSION_TIMEOUT:g}s",
                        hint="the host is overloaded or its disk is very slow; try again, or pass --cold") from exc
    return out.out.splitlines()[0] if out.out else binary


class TemplateService:
    def __init__(self, config: Config, templates_dir: Path, vms_dir: Path, network: NetworkService,
                 lifecycle: Lifecycle):
        self.config = config
        self.dir = templates_dir
        self.vms_dir = vms_dir
        self.network = network
        self.lifecycle = lifecycle
        self.lock = KeyedLock("template")
        self.reserved_ips: set[str] = set()  # addresses of templates being built (not VMs, not in the store)
        self.claims: dict[str, int] = {}  # digest -> creates between finding it and their disks naming it
        self._qemu_version: str | None = None
        self._agent = hashlib.sha256(agent_build.SOURCE.read_bytes()).hexdigest()[:16]

    async def key(self, image: Image, kernel: Kernel, spec: VMSpec, accel: str) -> TemplateKey:
        if self._qemu_version is None:
            self._qemu_version = await qemu_version(self.config.qemu_bin)
        return TemplateKey(
            image=f"{image.name}@{image.created_at.isoformat()}", image_dir=image.dir,
            image_rootfs_sha256=str(image.manifest.get("rootfs_sha256", "")),
            kernel=f"{kernel.name}@{kernel.version}@{kernel.created_at.isoformat()}",
            kernel_dir=kernel.dir, vcpu=spec.vcpu, memory_mib=spec.memory_mib, disk_size=spec.disk_size,
            runtime="qemu", accel=accel, vmm=self._qemu_version, agent=self._agent,
            config=await self.lifecycle.config_fingerprint(),
        )

    def find(self, key: TemplateKey) -> Template | None:
        path = self.dir / key.digest
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != key.__dict__ or not all((path / f).is_file() for f in (MEMORY, STATE, ROOT, WORK)):
            return None
        return Template(path, meta)

    async def ensure(self, image: Image, kernel: Kernel, spec: VMSpec, accel: str, reserve_ip: Callable[[], str],
                     reporter: Reporter) -> Template:
        """The template for this VM's key, built now (one cold boot + snapshot) when there is none."""
        key = await self.key(image, kernel, spec, accel)
        async with self.lock.hold(key.digest):
            found = self.find(key)
            if found is not None:
                self.claim(found.digest)
                return found
            reporter.note(f"snapshot: building a template ({spec.vcpu} vCPU, {spec.memory_mib} MiB, image "
                         f"{image.name}) once; VMs with the same shape then start from it")
            built = await self._build(key, image, kernel, accel, reserve_ip, reporter)
            self.claim(built.digest)
            return built

    def claim(self, digest: str) -> None:
        """Keep a template from prune until :meth:`release`: its clone's disks do not name it yet."""
        self.claims[digest] = self.claims.get(digest, 0) + 1

    def release(self, digest: str) -> None:
        left = self.claims.get(digest, 0) - 1
        if left > 0:
            self.claims[digest] = left
        else:
            self.claims.pop(digest, None)

    async def _build(self, key: TemplateKey, image: Image, kernel: Kernel, accel: str, reserve_ip: Callable[[], str],
                     reporter: Reporter) -> Template:
        started = time.monotonic()
        dest = self.dir / key.digest
        if dest.exists():  # an unfinished or stale build under this key
            await asyncio.to_thread(shutil.rmtree, dest, True)
        vm_id = key.digest[:12]
        name = f"tpl-{key.digest[:8]}"
        mac = ipam.mac_for(vm_id)
        driver = QemuVMM(self.config.qemu_bin)
        async with staging(dest) as stage, contextlib.AsyncExitStack() as undo:
            reporter.stage("template: disks")
            image_dir = Path(image.dir)
            await storage.make_overlay(image_dir / "rootfs.ext4", "raw", stage / ROOT)
            await storage.make_work_disk(image_dir / "work-seed.ext4", stage / WORK, key.disk_size)
            host_key = ssh.make_host_key(stage / "ssh_host_ed25519_key")
            await self.lifecycle.build_config(stage / CONFIG, host_key, reporter)
            with open(stage / MEMORY, "wb") as f:
                f.truncate(key.memory_mib << 20)
            ip = reserve_ip()
            self.reserved_ips.add(ip)
            undo.callback(self.reserved_ips.discard, ip)
            tap = await self.network.acquire_tap()
            undo.push_async_callback(self.network.release_tap, tap)
            await self.network.add_filter(vm_id, tap, mac, ip)
            undo.push_async_callback(self.network.remove_filter, vm_id)
            spec = self.lifecycle.boot_spec(
                vm_id, name, ip, mac, "qemu", image, kernel,
                disks=(Disk(stage / ROOT, format="qcow2"), Disk(stage / WORK)), config_disk=stage / CONFIG,
                workspace_disk=workspace_slot(stage), tap=tap, vcpu=key.vcpu, memory_mib=key.memory_mib,
                vm_dir=stage, accel=accel)
            reporter.stage("template: booting")
            handle = await driver.launch(_with_memory(spec, stage / MEMORY, shared=True, restore_from=None))
            undo.push_async_callback(driver.kill, handle)
            await self._wait_settled(handle, driver, reporter)
            # The agent link was just closed: give the guest time to handle that port event before it is
            # paused, so clones do not wake up with it still pending (see guest.agent.REPING).
            await asyncio.sleep(DETACH_SETTLE)
            reporter.stage("template: saving the snapshot")
            await driver.save_snapshot(handle, stage / STATE)
            await driver.kill(handle)
            meta = {"key": key.__dict__, "ip": ip, "mac": mac, "name": name, "accel": accel,
                    "image_name": image.name, "created_at": now().isoformat(),
                    "build_seconds": round(time.monotonic() - started, 1),
                    "state_bytes": (stage / STATE).stat().st_size}
            write_atomic(stage / META, json.dumps(meta, indent=2).encode(), 0o600)
        log.info("snapshot template built", extra={"template": key.digest, "seconds": meta["build_seconds"]})
        found = self.find(key)
        if found is None:
            raise HostError(f"the snapshot template {dest} is incomplete right after its build")
        return found

    async def _wait_settled(self, handle: Handle, driver: QemuVMM, reporter: Reporter) -> None:
        """Until the guest agent answers and systemd has finished starting the system (sshd included)."""
        timeout = self.config.ready_timeout_seconds
        deadline = time.monotonic() + timeout
        socket, vsock = driver.agent_socket(handle)
        async with await AgentLink.open(socket, vsock=vsock) as link:
            while True:
                try:
                    await link.ping(within=min(5.0, max(0.1, deadline - time.monotonic())))
                    break
                except Exception as exc:
                    if time.monotonic() > deadline or not driver.is_alive(handle):
                        raise GuestError(f"the template guest's agent did not answer within {timeout}s: {exc}",
                                         hint="see console.log in the template's build directory") from exc
                    await asyncio.sleep(0.2)  # a closed link fails at once: do not spin
            result = await link.exec(["systemctl", "is-system-running", "--wait"],
                                     timeout=max(1.0, deadline - time.monotonic()))
            state = result.stdout.decode(errors="replace").strip()
            if state not in ("running", "degraded"):
                raise GuestError(f"the template guest did not finish booting (systemd says {state!r})")
            reporter.log(f"template guest settled (systemd: {state})")
            # Every clone maps the template's RAM: what the page cache holds of boot-only files would be
            # resident in each of them. Dropping it costs a clone a few disk reads on first use.
            await link.exec(["/bin/sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], timeout=60)

    # --- listing and pruning ------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every template on disk, with its size and the VMs standing on it."""
        users = self._users()
        out = []
        for path in sorted(self.dir.glob("*")) if self.dir.is_dir() else []:
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                meta = json.loads((path / META).read_text())
            except (OSError, ValueError):
                meta = {}
            allocated = sum(f.stat().st_blocks * 512 for f in path.iterdir() if f.is_file())
            key = meta.get("key") or {}
            out.append({"id": path.name, "image": meta.get("image_name"), "vcpu": key.get("vcpu"),
                        "memory_mib": key.get("memory_mib"), "disk_size": key.get("disk_size"),
                        "created_at": meta.get("created_at"), "build_seconds": meta.get("build_seconds"),
                        "allocated_bytes": allocated, "vms": sorted(users.get(path.name, [])),
                        "complete": bool(meta)})
        return out

    def _users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for disks in self.vms_dir.glob(f"*/{DISKS}") if self.vms_dir.is_dir() else []:
            template = read_work_disk(disks.parent).template
            if template:
                users.setdefault(template, []).append(disks.parent.name)
        return users

    async def prune(self, *, everything: bool = False) -> list[str]:
        """Remove templates no VM stands on: all of them with ``everything``, else the ones whose key no
        longer matches what a VM would use (a superseded image, kernel, QEMU or agent)."""
        removed = []
        for entry in self.entries():
            if entry["vms"]:
                continue
            if self._qemu_version is None and not everything:
                self._qemu_version = await qemu_version(self.config.qemu_bin)
            if not everything and entry["complete"] and self._current(entry["id"]):
                continue
            async with self.lock.hold(entry["id"]):
                # Looked at again under the lock: a create may have found it meanwhile.
                if self.claims.get(entry["id"]) or self._users().get(entry["id"]):
                    continue
                await asyncio.to_thread(shutil.rmtree, self.dir / entry["id"], True)
            removed.append(entry["id"])
        return removed

    def _current(self, digest: str) -> bool:
        """Whether the template's image (same rootfs) and kernel still exist and its QEMU and agent are
        today's."""
        try:
            key = json.loads((self.dir / digest / META).read_text())["key"]
        except (OSError, ValueError, KeyError):
            return False
        try:  # the image is still the one the template booted (not deleted, not rebuilt under its name)
            manifest = json.loads((Path(key.get("image_dir", "/nonexistent")) / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return (key.get("vmm") == self._qemu_version and key.get("agent") == self._agent
                and key.get("format") == FORMAT and Path(key.get("kernel_dir", "/nonexistent")).is_dir()
                and str(manifest.get("rootfs_sha256", "")) == key.get("image_rootfs_sha256"))


