"""VMService: every VM request (create, start, stop, restart, kill, delete, prune, set, logs, stats, ports).

Locks: ``vm_lock`` (one per VM id) around anything that changes a VM; ``create_lock`` only around the
millisecond "check name + allocate IP + insert row". Commands that take several VMs run concurrently and
report per VM, in the order given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from banger import api
from banger.config import Config, parse_size
from banger.daemon.exec_service import ExecService
from banger.daemon.image_service import ImageService
from banger.daemon.kernel_service import KernelService
from banger.daemon.locks import KeyedLock
from banger.daemon.network import NetworkService
from banger.daemon.operations import Operations
from banger.daemon.runtime import Choice, RuntimeService
from banger.daemon.templates import Template, TemplateService
from banger.daemon.vm_create import build_spec, make_clone_disks, make_disks, new_vm, remove_disks
from banger.daemon.vm_handles import (
    CLONE_WORK_DISK,
    WORK_DISK,
    WORKSPACE_DISK,
    read_handles,
    read_work_disk,
    write_handles,
)
from banger.daemon.vm_lifecycle import Lifecycle
from banger.errors import (
    NO_AGENT,
    AlreadyExists,
    BangerError,
    Conflict,
    DaemonUnavailable,
    GuestError,
    InvalidArgument,
    to_rpc_error,
)
from banger.guest import ports, ssh
from banger.host import storage
from banger.model import VM, Image, Kernel, VMSpec, Workspace, now
from banger.names import validate_name
from banger.paths import Layout
from banger.progress import NullReporter, Reporter
from banger.store.repo import Store
from banger.wire import Operation

log = logging.getLogger("banger.daemon.vm")


class OfflineWorkspaces(Protocol):
    """What create needs of the WorkspaceService (which itself depends on this service)."""

    def offline_eligible(self, req: api.WorkspacePrepare) -> bool: ...

    async def build_offline(self, vm: VM, req: api.WorkspacePrepare,
                            dest: Path) -> tuple[Workspace, api.WorkspacePrepareResult, set[str]]: ...

    async def bootstrap_offline(self, vm: VM, req: api.WorkspacePrepare, ws: Workspace,
                                entries_top: set[str]) -> list[str]: ...


class VMService:
    def __init__(self, config: Config, layout: Layout, store: Store, operations: Operations,
                 images: ImageService, kernels: KernelService, network: NetworkService, runtimes: RuntimeService,
                 key_path: Path):
        self.config = config
        self.layout = layout
        self.store = store
        self.operations = operations
        self.images = images
        self.kernels = kernels
        self.network = network
        self.runtimes = runtimes
        self.key_path = key_path
        self.lifecycle = Lifecycle(config, store, network, runtimes, key_path, layout.known_hosts)
        self.templates = TemplateService(config, layout.templates_dir, layout.vms_dir, network, self.lifecycle)
        self.exec = ExecService(self.lifecycle.running, runtimes.driver)
        self.workspaces: OfflineWorkspaces | None = None  # set by the composition root
        self.vm_lock = KeyedLock("vm")
        self.create_lock = asyncio.Lock()

    # --- create -------------------------------------------------------------------------------------

    def defaults(self) -> VMSpec:
        d = self.config.vm_defaults
        return VMSpec(vcpu=d.vcpu, memory_mib=d.memory_mib, disk_size=parse_size(d.disk_size),
                      system_overlay_size=parse_size(d.system_overlay_size))

    def create(self, req: api.VMCreate) -> Operation:
        """Validate at once, then run the create as an operation the CLI follows."""
        if req.name is not None:
            validate_name("vm", req.name)
            if self.store.find_vm(req.name) is not None:
                raise AlreadyExists(f"a VM named {req.name!r} already exists",
                                    hint="pick another --name, or `banger vm delete` the old one")
        image_name = req.image or self.images.default_name()
        validate_name("image", image_name)
        spec = build_spec(req, self.defaults(), image_name, self.config.runtime)
        return self.operations.start(api.VM_CREATE.name, req.name or "(new VM)",
                                     lambda r: self._create(req, spec, r))

    async def _create(self, req: api.VMCreate, spec: VMSpec, reporter: Reporter) -> api.VMCreated:
        reporter.stage("resolving image")
        image = await self.images.ensure(spec.image, reporter)
        kernel = await self.kernels.ensure(spec.kernel or image.kernel_ref or self.config.default_kernel, reporter)
        choice = await self.runtimes.choose(spec.runtime, Path(kernel.dir) / "vmlinux",
                                            Path(kernel.dir) / "initrd.img")
        reporter.note(choice.note)
        template = await self._template_for(req, spec, image, kernel, choice.runtime, choice.accel, reporter)
        try:
            async with self.create_lock:
                vm = new_vm(req.name, spec, {v.name for v in self.store.list_vms()}, self._free_ip(),
                            self.layout.vms_dir)
                vm = vm.model_copy(update={"runtime": choice.runtime, "creating": True})
                self.store.insert_vm(vm)
            return await self._create_with(req, vm, image, kernel, choice, template, reporter)
        finally:
            if template is not None:  # claimed by ensure: prune kept it until this VM's disks named it
                self.templates.release(template.digest)

    async def _create_with(self, req: api.VMCreate, vm: VM, image: Image, kernel: Kernel, choice: Choice,
                           template: Template | None, reporter: Reporter) -> api.VMCreated:
        template_used: str | None = None
        prepared: api.WorkspacePrepareResult | None = None
        top: set[str] = set()
        async with self.vm_lock.hold(vm.id), contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self._discard, vm)
            Path(vm.vm_dir).mkdir(parents=True, exist_ok=True)
            self.lifecycle.make_host_key(vm)  # no trust on first use: pinned before the first boot
            offline = (template is not None and req.workspace is not None and self.workspaces is not None
                       and self.workspaces.offline_eligible(req.workspace))
            if offline:
                assert req.workspace is not None and self.workspaces is not None
                reporter.stage("building the workspace disk")
                ws, prepared, top = await self.workspaces.build_offline(vm, req.workspace,
                                                                      Path(vm.vm_dir) / WORKSPACE_DISK)
                vm = self.store.update_vm(vm, workspace=ws)
            if template is not None:
                restored = await self._restore(vm, template, image, kernel, reporter)
                if restored is not None:
                    vm = restored
                    template_used = template.digest
                else:
                    template = None
            if template is None:
                reporter.stage("preparing disks")
                await make_disks(vm, image, self.network.priv)
            if req.start and template is None:
                try:
                    vm = await self.lifecycle.start(vm, image, kernel, choice.accel, reporter)
                except GuestError:
                    if vm.id in self.lifecycle.running:  # left running for inspection: keep it
                        undo.pop_all()
                        self.store.update_vm(self.store.get_vm(vm.id), creating=False)
                    raise
            if prepared is not None and req.workspace is not None and self.workspaces is not None \
                    and vm.workspace is not None:
                prepared.notes += await self.workspaces.bootstrap_offline(vm, req.workspace, vm.workspace, top)
            vm = self.store.update_vm(self.store.get_vm(vm.id), creating=False)
            undo.pop_all()
        return api.VMCreated(vm=vm, runtime_note=choice.note, template=template_used, workspace=prepared)

    def build_template(self, req: api.VMCreate) -> Operation:
        """``banger vm templates build``: the template a ``vm create`` with these options would clone,
        built ahead of time as an operation (a no-op when it exists)."""
        image_name = req.image or self.images.default_name()
        validate_name("image", image_name)
        spec = build_spec(req, self.defaults(), image_name, "qemu")

        async def build(reporter: Reporter) -> api.TemplateBuilt:
            image = await self.images.ensure(spec.image, reporter)
            kernel = await self.kernels.ensure(spec.kernel or image.kernel_ref or self.config.default_kernel, reporter)
            choice = await self.runtimes.choose("qemu", Path(kernel.dir) / "vmlinux", Path(kernel.dir) / "initrd.img")
            template = await self.templates.ensure(image, kernel, spec, choice.accel, self._free_ip, reporter)
            self.templates.release(template.digest)  # built ahead of time: no clone waits on it
            return api.TemplateBuilt(template=template.digest, build_seconds=template.meta.get("build_seconds"))

        return self.operations.start(api.VM_TEMPLATES_BUILD.name, image_name, build)

    def _free_ip(self) -> str:
        """The lowest address no VM and no template being built holds (callers hold the create lock or
        run without awaiting between this and recording the address)."""
        return self.network.allocate_ip(self.store.taken_ips() | self.templates.reserved_ips)

    async def _template_for(self, req: api.VMCreate, spec: VMSpec, image: Image, kernel: Kernel, runtime: str,
                            accel: str, reporter: Reporter) -> Template | None:
        """The snapshot template this VM can start from (built now if missing), or None to boot cold."""
        if not req.start or req.cold or not self.config.snapshots:
            return None
        if runtime != "qemu":
            reporter.note("snapshot: clones are QEMU-only for now; booting Firecracker cold")
            return None
        # A template waits for systemd to settle and a clone is re-homed by its agent with iproute2: an
        # image booted by banger-init, or without the agent, would only fail slowly and boot cold anyway.
        if image.extra.get("init") == "banger-init" \
                or not await self.lifecycle.image_has_agent(image):
            reporter.note(f"snapshot: image {image.name} has no systemd-booted banger-agent to clone; booting cold")
            return None
        try:
            return await self.templates.ensure(image, kernel, spec, accel, self._free_ip, reporter)
        except DaemonUnavailable:
            raise  # bangerd-root is gone: a cold boot needs it just as much, so say that, not this
        except BangerError as exc:
            reporter.note(f"snapshot: no template ({exc.message}); booting cold")
            log.warning("snapshot template build failed", exc_info=True)
            return None

    async def _restore(self, vm: VM, template: Template, image: Image, kernel: Kernel,
                       reporter: Reporter) -> VM | None:
        """Start ``vm`` as a clone of ``template``; None (and nothing left of the attempt) when that fails,
        so the caller boots it cold instead."""
        vm_dir = Path(vm.vm_dir)
        try:
            root, work = await make_clone_disks(vm, template.dir, template.digest)
            spec = template.clone_spec(self.lifecycle, image, kernel, vm.id, vm.name, vm_dir, root, work)
            restored, _ = await self.lifecycle.restore(vm, spec, reporter)
            return restored
        except DaemonUnavailable:
            raise
        except BangerError as exc:
            reporter.note(f"snapshot: restoring the clone failed ({exc.message}); booting cold")
            log.warning("clone restore failed", extra={"vm": vm.name}, exc_info=True)
            await remove_disks(vm, self.network.priv, keep_dir=True)
            return None

    async def _discard(self, vm: VM) -> None:
        """Undo a create: VMM, TAP, NAT, disks, directory, row."""
        await self.exec.forget_vm(vm.id)
        current = self.store.find_vm(vm.id) or vm
        handles = self.lifecycle.running.get(vm.id) or read_handles(Path(vm.vm_dir))
        if handles is not None:
            await self.runtimes.driver(handles.vmm.runtime).kill(handles.vmm)
        await self.lifecycle.release(current, handles)
        await remove_disks(current, self.network.priv)
        ssh.forget_host(self.layout.known_hosts, *(n for n in (current.ip, f"{current.name}.vm") if n))
        self.store.delete_vm(vm.id)

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, ref: str) -> VM:
        vm = self.store.get_vm(ref)
        async with self.vm_lock.hold(vm.id):
            vm = self.store.get_vm(vm.id)
            if vm.state == "running":
                return vm
            image = await self.images.ensure(vm.spec.image, NullReporter())
            kernel = await self.kernels.ensure(vm.spec.kernel or image.kernel_ref or self.config.default_kernel,
                                               NullReporter())
            choice = await self.runtimes.choose(vm.runtime or "qemu", Path(kernel.dir) / "vmlinux",
                                                Path(kernel.dir) / "initrd.img")
            return await self.lifecycle.start(vm, image, kernel, choice.accel, NullReporter())

    async def stop(self, ref: str, *, graceful: bool = True) -> VM:
        vm = self.store.get_vm(ref)
        async with self.vm_lock.hold(vm.id):
            vm = self.store.get_vm(vm.id)
            if vm.state != "running" and read_handles(Path(vm.vm_dir)) is None:
                return vm
            await self.exec.forget_vm(vm.id)
            return await self.lifecycle.stop(vm, graceful=graceful, reason=None if graceful else "killed")

    async def restart(self, ref: str) -> VM:
        await self.stop(ref)
        return await self.start(ref)

    async def delete(self, ref: str) -> VM:
        vm = self.store.get_vm(ref)
        async with self.vm_lock.hold(vm.id):
            vm = self.store.get_vm(vm.id)
            await self._discard(vm)
            log.info("vm deleted", extra={"vm": vm.name, "id": vm.id})
            return vm

    async def prune(self) -> list[VM]:
        """Delete every VM that is not running."""
        victims = [v for v in self.store.list_vms() if v.state != "running" and not v.creating]
        results = await self.fan_out([v.id for v in victims], self.delete)
        return [r.vm for r in results if r.vm is not None]

    async def fan_out(self, refs: list[str], action: Callable[[str], Awaitable[VM]]) -> list[api.VMOutcome]:
        """Run ``action`` on every ref concurrently; one result per ref, in order, failures included."""
        async def one(ref: str) -> api.VMOutcome:
            try:
                return api.VMOutcome(ref=ref, ok=True, vm=await action(ref))
            except Exception as exc:
                return api.VMOutcome(ref=ref, ok=False, error=api.ErrorInfo.model_validate(to_rpc_error(exc)))

        return list(await asyncio.gather(*(one(r) for r in refs)))

    # --- set ----------------------------------------------------------------------------------------

    async def set(self, req: api.VMSet) -> VM:
        vm = self.store.get_vm(req.ref)
        async with self.vm_lock.hold(vm.id):
            vm = self.store.get_vm(vm.id)
            spec = vm.spec.model_copy()
            if req.disk_size is not None:
                await self._resize(vm, req.disk_size)
                spec.disk_size = parse_size(req.disk_size)
            if req.vcpu is not None:
                spec.vcpu = req.vcpu
            if req.memory_mib is not None:
                spec.memory_mib = req.memory_mib
            if req.nat is not None and req.nat != spec.nat:
                await self._set_nat(vm, req.nat)
                spec.nat = req.nat
            return self.store.update_vm(vm, spec=spec)

    async def _resize(self, vm: VM, size_text: str) -> None:
        try:
            size = parse_size(size_text)
        except ValueError as exc:
            raise InvalidArgument(f"--disk-size: {exc}") from exc
        if vm.state == "running":
            raise Conflict(f"VM {vm.name!r} is running; its work disk can only be resized while stopped",
                           hint=f"`banger vm stop {vm.name}` first")
        work = read_work_disk(Path(vm.vm_dir))
        if work.format != "raw":
            raise Conflict(f"VM {vm.name!r} was cloned from a snapshot template; its work disk cannot grow yet",
                           hint="create it with --cold (or --disk-size) to get a work disk of another size")
        await storage.resize_work_disk(work.path, size)

    async def _set_nat(self, vm: VM, enabled: bool) -> None:
        handles = self.lifecycle.running.get(vm.id)
        if vm.state != "running" or handles is None:
            return  # applied at the next start
        if enabled:
            await self.network.add_nat(vm.id, vm.ip or "")
        else:
            await self.network.remove_nat(vm.id)
        handles.nat = enabled
        write_handles(Path(vm.vm_dir), handles)

    # --- guest access -------------------------------------------------------------------------------

    def running_vm(self, ref: str) -> VM:
        vm = self.store.get_vm(ref)
        if vm.state != "running" or not vm.ip:
            raise Conflict(f"VM {vm.name!r} is {vm.state}, not running",
                           hint=f"`banger vm start {vm.name}` first")
        return vm

    async def sshd_ready(self, vm: VM) -> None:
        """Return once a just-cloned VM's sshd greets (at once for any other VM). Re-homing wrote the clone's
        key before it returned, and an sshd that only loads keys when it executes got SIGHUP then, so the
        listener that greets serves the clone's key; a client that still met the old one would be refused
        by the pinned known_hosts, not fooled."""
        if vm.id not in self.lifecycle.ssh_pending:
            return
        handles = self.lifecycle.running.get(vm.id)
        alive = (lambda: self.runtimes.driver(handles.vmm.runtime).is_alive(handles.vmm)) if handles else None
        await ssh.wait_port(vm.ip or "", 22, within=15, alive=alive)
        self.lifecycle.ssh_pending.discard(vm.id)

    def touch(self, vm: VM) -> None:
        """Count as use for the stale reaper."""
        self.store.update_vm(vm, touched_at=now())

    async def connect_info(self, ref: str, *, wait_ssh: bool = True) -> api.VMConnectInfo:
        """Where and how to ssh into a running VM (once its sshd answers, with ``wait_ssh``); counts as use
        for the stale reaper."""
        vm = self.running_vm(ref)
        self.touch(vm)
        if wait_ssh:
            await self.sshd_ready(vm)
        return api.VMConnectInfo(name=vm.name, ip=vm.ip or "", key_path=str(self.key_path),
                                 known_hosts=str(self.layout.known_hosts),
                                 workdir=vm.workspace.guest_path if vm.workspace else None)

    def resolve_dns(self, name: str) -> str | None:
        """The address of running VM ``name`` (the ``.vm`` DNS server asks)."""
        vm = self.store.find_vm(name)
        return vm.ip if vm is not None and vm.state == "running" and vm.name == name else None

    async def _guest_command(self, vm: VM, command: str) -> tuple[int, bytes, bytes]:
        """A short command of banger's own in the guest: through its agent, else over SSH; (status,
        stdout, stderr), output capped at 1 MiB."""
        out = bytearray()

        def collect(data: bytes) -> None:
            out.extend(data[:max(0, (1 << 20) - len(out))])

        try:
            result = await self.exec.run(vm.id, vm.name, command, on_stdout=collect, timeout=60)
            return result.status, bytes(out), result.stderr
        except GuestError as exc:
            if exc.data.get("reason") != NO_AGENT:
                raise
        await self.sshd_ready(vm)
        conn = await ssh.connect(vm.ip or "", key_path=self.key_path, known_hosts=self.layout.known_hosts,
                                 host_aliases=(f"{vm.name}.vm",))
        async with conn:
            done = await ssh.exec(conn, command)
        return done.exit_status, done.stdout, done.stderr

    async def ports(self, refs: list[str]) -> api.VMPortsResult:
        async def one(ref: str) -> api.VMPorts:
            try:
                vm = self.running_vm(ref)
                status, out, err = await self._guest_command(vm, ports.SS_COMMAND)
                if status != 0:
                    raise GuestError(f"`{ports.SS_COMMAND}` failed in VM {vm.name!r}: {err.decode()[-200:]}")
                found = [api.Listener(**dataclasses.asdict(li), endpoint=li.endpoint(vm.name))
                         for li in ports.parse_ss(out.decode(errors="replace"))]
                return api.VMPorts(ref=ref, listeners=found)
            except Exception as exc:
                return api.VMPorts(ref=ref, ok=False, error=api.ErrorInfo.model_validate(to_rpc_error(exc)))

        return api.VMPortsResult(vms=list(await asyncio.gather(*(one(r) for r in refs))))

    # --- observation --------------------------------------------------------------------------------

    def logs(self, req: api.VMLogs) -> api.VMLogsResult:
        vm = self.store.get_vm(req.ref)
        path = Path(vm.vm_dir) / "console.log"
        try:
            with open(path, "rb") as f:
                f.seek(req.offset)
                data = f.read(req.max_bytes)
        except FileNotFoundError:
            data = b""
        return api.VMLogsResult(data=data.decode(errors="replace"), offset=req.offset + len(data))

    def stats(self, ref: str) -> api.VMStats:
        vm = self.store.get_vm(ref)
        vm_dir = Path(vm.vm_dir)
        handles = self.lifecycle.running.get(vm.id)
        if handles is None:
            return api.VMStats(ref=vm.name, state=vm.state, disks=_disk_usage(vm_dir))
        return api.VMStats(ref=vm.name, state=vm.state, disks=_disk_usage(vm_dir), tap=handles.tap,
                           **_process_stats(handles.vmm.pid))


def _disk_usage(vm_dir: Path) -> dict[str, api.DiskUsage]:
    out = {}
    for name in ("root.qcow2", "root.ext4", WORK_DISK, CLONE_WORK_DISK):
        with contextlib.suppress(OSError):
            st = (vm_dir / name).stat()
            out[name] = api.DiskUsage(size=st.st_size, allocated=st.st_blocks * 512)
    return out


def _process_stats(pid: int) -> dict[str, Any]:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return {}
    ticks = os.sysconf("SC_CLK_TCK")
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return {"pid": pid, "cpu_seconds": (int(fields[11]) + int(fields[12])) / ticks, "rss_bytes": rss * 1024}
