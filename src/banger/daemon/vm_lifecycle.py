"""Starting and stopping one VM: network, VMM launch, readiness, and releasing everything again.

Callers hold the VM's lock. Each start step pushes its undo, so a failure or cancellation at any point
leaves no TAP, NAT rule, VMM process or handles file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from pathlib import Path

from banger import bootargs
from banger.config import Config
from banger.daemon.network import NetworkService
from banger.daemon.runtime import RuntimeService
from banger.daemon.vm_handles import (
    WORKSPACE_DISK,
    Handles,
    read_handles,
    read_root_disk,
    read_work_disk,
    remove_handles,
    write_handles,
)
from banger.errors import BangerError, GuestError, HostError, OperationTimeout
from banger.guest import provision, rehome, ssh
from banger.guest.agent import REPING, AgentLink
from banger.guest.provision import FileToWrite
from banger.host import ext4
from banger.host.vmm import VMM, Disk, Handle, LaunchSpec
from banger.images import agent as agent_build
from banger.model import VM, Image, Kernel, now
from banger.progress import Reporter
from banger.store.repo import Store
from banger.workspace import image as workspace_image

log = logging.getLogger("banger.daemon.vm")
STOP_GRACE = 20.0
HOST_KEY = "ssh_host_ed25519_key"  # the VM's SSH host key, in its directory (the daemon made it)
GUEST_CID = 3  # Firecracker's vsock is private to each VM (its own socket), so every guest can be CID 3


# Run through the agent of an image without sshd before it is called ready (see Lifecycle._wait_agent).
# systemctl is-system-running exits non-zero for "degraded" too, which is as ready as a template allows.
READY_SCRIPT = ("if [ -d /run/systemd/system ]; then case $(systemctl is-system-running --wait) in "
                "running|degraded) ;; *) exit 1 ;; esac; "
                "else while [ ! -e /run/banger-ready ]; do sleep 0.1; done; fi")


class Lifecycle:
    """Start/stop/kill mechanics shared by create, start, restart, delete and reconcile."""

    def __init__(self, config: Config, store: Store, network: NetworkService, runtimes: RuntimeService,
                 key_path: Path, known_hosts: Path):
        self.config = config
        self.key_path = key_path
        self.known_hosts = known_hosts
        self.store = store
        self.network = network
        self.runtimes = runtimes
        self.running: dict[str, Handles] = {}  # vm id -> handles of VMs this daemon watches
        self.ssh_pending: set[str] = set()  # clones whose sshd may still be re-executing with their key
        self._agent_in_image: dict[tuple[str, int], bool] = {}  # (rootfs path, mtime) -> holds banger-agent

    def launch_spec(self, vm: VM, image: Image, kernel: Kernel, tap: str, accel: str) -> LaunchSpec:
        vm_dir = Path(vm.vm_dir)
        root = read_root_disk(vm_dir)
        if root is None:
            raise HostError(f"VM {vm.name!r} has no root disk record in {vm_dir}",
                            hint=f"the VM is damaged; `banger vm delete {vm.name}` and create it again")
        work = read_work_disk(vm_dir)
        disks = (Disk(root.path, format=root.format), Disk(work.path, format=work.format))
        return self.boot_spec(vm.id, vm.name, vm.ip or "", vm.mac, vm.runtime or "qemu", image, kernel,
                              disks=disks, config_disk=vm_dir / provision.CONFIG_DISK,
                              workspace_disk=workspace_slot(vm_dir), tap=tap, vcpu=vm.spec.vcpu,
                              memory_mib=vm.spec.memory_mib, vm_dir=vm_dir, accel=accel)

    def boot_spec(self, vm_id: str, name: str, ip: str, mac: str | None, runtime: str, image: Image, kernel: Kernel,
                  *, disks: tuple[Disk, Disk], config_disk: Path, workspace_disk: Path, tap: str, vcpu: int,
                  memory_mib: int, vm_dir: Path, accel: str) -> LaunchSpec:
        """The launch spec of a cold boot: root and work disk, the kernel's modules, the config disk, and
        last the workspace slot (see :func:`workspace_device`)."""
        kdir = Path(kernel.dir)
        modules = kdir / "modules.ext4"
        all_disks = list(disks)
        if modules.exists():
            all_disks.append(Disk(modules, read_only=True))
        all_disks.append(Disk(config_disk, read_only=True))
        init = image.extra.get("cmdline_init")
        cmdline = bootargs.kernel_cmdline(
            name=name, ip=ip, gateway=self.config.bridge_ip, cidr=self.config.cidr,
            dns=self.config.default_dns, modules_disk=modules.exists(),
            config_disk=f"/dev/vd{chr(96 + len(all_disks))}", init=init, runtime=runtime,
            extra=self.config.vm_defaults.kernel_args,
        )
        all_disks.append(Disk(workspace_disk))
        initrd = kdir / "initrd.img"
        return LaunchSpec(
            vm_id=vm_id, name=name, kernel=kdir / "vmlinux", initrd=initrd if initrd.exists() else None,
            cmdline=cmdline, disks=tuple(all_disks), tap=tap, mac=mac, vcpu=vcpu, memory_mib=memory_mib,
            vm_dir=vm_dir, accel="kvm" if accel == "kvm" else "tcg",
            vsock_cid=GUEST_CID if runtime == "firecracker" else None,
        )

    async def start(self, vm: VM, image: Image, kernel: Kernel, accel: str, reporter: Reporter,
                    *, wait: bool = True) -> VM:
        """Boot ``vm``; on return it is running (and, with ``wait``, its sshd answers)."""
        driver = self.runtimes.driver(vm.runtime or "qemu")
        await self.provision(vm, reporter)
        async with contextlib.AsyncExitStack() as undo:
            tap = await self._attach_network(vm, undo, reporter)
            reporter.stage(f"starting {vm.runtime}")
            handle_spec = self.launch_spec(vm, image, kernel, tap, accel)
            has_agent = await self.image_has_agent(image)
            handle = await driver.launch(handle_spec)
            vm = self._adopt_launched(vm, driver, handle, tap, accel, undo, agent=has_agent)
            if wait and has_agent and image.extra.get("sshd") is False:
                # An import without sshd is reached only through its agent: that is what "ready" means.
                reporter.stage("waiting for the guest agent")
                secs = await self._wait_agent(vm, driver, handle)
                reporter.log(f"guest agent answered after {secs:.1f}s (the image has no sshd)")
            elif wait:
                reporter.stage("waiting for guest")
                try:
                    secs = await ssh.wait_ssh_ready(
                        vm.ip or "", key_path=self.key_path, known_hosts=self.known_hosts,
                        host_aliases=(f"{vm.name}.vm",), timeout=self.config.ready_timeout_seconds,
                        alive=lambda: driver.is_alive(handle))
                    reporter.log(f"guest answered on {vm.ip}:22 after {secs:.1f}s")
                except OperationTimeout as exc:
                    if driver.is_alive(handle):
                        undo.pop_all()  # keep it running for inspection
                        raise GuestError(
                            f"VM {vm.name!r} booted but its sshd did not answer on {vm.ip}:22 within "
                            f"{self.config.ready_timeout_seconds}s; sshd in the guest is the likely cause",
                            hint=f"see `banger vm logs {vm.name}`; the VM was left running for inspection "
                                 f"(`banger vm delete {vm.name}` removes it)",
                        ) from exc
                    raise GuestError(f"VM {vm.name!r} stopped during boot: {exc.message}",
                                     hint=f"see `banger vm logs {vm.name}`") from exc
            if wait and vm.workspace is not None and vm.workspace.offline:
                reporter.stage("mounting the workspace")
                socket, vsock = driver.agent_socket(handle)
                async with await AgentLink.open(socket, vsock=vsock) as link:
                    await link.ping(within=30)
                    await mount_workspace(link, vm, handle_spec)
            undo.pop_all()
        return vm

    async def _wait_agent(self, vm: VM, driver: VMM, handle: Handle) -> float:
        """Until the guest's agent answers and the guest has finished its own start-up (the agent starts
        first, before the config disk, network and work disk are applied): seconds taken; GuestError (the VM
        is then torn down by the caller's undo) after the ready timeout."""
        started = time.monotonic()
        timeout = self.config.ready_timeout_seconds
        socket, vsock = driver.agent_socket(handle)
        while True:
            left = timeout - (time.monotonic() - started)
            try:
                async with await AgentLink.open(socket, vsock=vsock, within=max(0.1, min(5.0, left))) as link:
                    await link.ping(within=max(0.1, min(5.0, left)))
                    # banger-init marks the end of its start-up; a systemd guest says when it has settled.
                    done = await link.exec(["/bin/sh", "-c", READY_SCRIPT], timeout=max(1.0, left))
                if done.status != 0:
                    raise GuestError(f"the guest's start-up check exited {done.status}")
                return time.monotonic() - started
            except (OSError, EOFError, BangerError) as exc:  # not up yet, or the link dropped: again
                if not driver.is_alive(handle):
                    raise GuestError(f"VM {vm.name!r} stopped during boot",
                                     hint=f"see `banger vm logs {vm.name}`") from exc
                if time.monotonic() - started >= timeout:
                    raise GuestError(f"VM {vm.name!r} booted but its agent did not say it was ready within "
                                     f"{timeout}s: {exc}",
                                     hint="an image without sshd is reached only through banger-agent: "
                                          "does its init start it (see the README on images)?") from exc
                await asyncio.sleep(0.2)  # a link the guest has not opened yet fails at once: do not spin

    async def _attach_network(self, vm: VM, undo: contextlib.AsyncExitStack, reporter: Reporter) -> str:
        """A TAP whose filter passes only this VM's MAC and address, and NAT when asked; undo pushed."""
        reporter.stage("network")
        tap = await self.network.acquire_tap()
        undo.push_async_callback(self.network.release_tap, tap)
        await self.network.add_filter(vm.id, tap, vm.mac or "", vm.ip or "")
        undo.push_async_callback(self.network.remove_filter, vm.id)
        if vm.spec.nat:
            await self.network.add_nat(vm.id, vm.ip or "")
            undo.push_async_callback(self.network.remove_nat, vm.id)
        return tap

    async def image_has_agent(self, image: Image) -> bool:
        """Whether ``image``'s root filesystem holds banger-agent (golden images do; OCI imports do when the
        pull had one to give), read once per rootfs file with debugfs (nothing is mounted)."""
        rootfs = Path(image.dir) / "rootfs.ext4"
        try:
            key = (str(rootfs), rootfs.stat().st_mtime_ns)
        except OSError:
            return False
        if key not in self._agent_in_image:
            try:
                listing = await ext4.debugfs(rootfs, f"stat /{agent_build.GUEST_BINARY}")
            except BangerError:
                listing = ""
            self._agent_in_image[key] = "Inode:" in listing
        return self._agent_in_image[key]

    def _adopt_launched(self, vm: VM, driver: VMM, handle: Handle, tap: str, accel: str,
                        undo: contextlib.AsyncExitStack, *, agent: bool = True) -> VM:
        """Record a launched VMM (handles.json, the watch list, state running); undo pushed."""
        undo.push_async_callback(driver.kill, handle)
        handles = Handles(handle, tap, vm.spec.nat, accel, agent)
        write_handles(Path(vm.vm_dir), handles)
        undo.callback(remove_handles, Path(vm.vm_dir))
        self.running[vm.id] = handles
        undo.callback(self.running.pop, vm.id, None)
        return self.store.update_vm(vm, state="running", reason=None, touched_at=now())

    async def restore(self, vm: VM, spec: LaunchSpec, reporter: Reporter) -> tuple[VM, float]:
        """Start ``vm`` as a clone from the snapshot in ``spec`` and re-home it; the VM and the seconds
        from launch until it was re-homed (its agent answers as itself; sshd follows, see ssh_pending)."""
        driver = self.runtimes.driver("qemu")
        host_key = ssh.read_host_key(Path(vm.vm_dir) / HOST_KEY) or self.make_host_key(vm)
        identity = rehome.Identity(name=vm.name, mac=vm.mac or "", ip=vm.ip or "", prefixlen=self.network.prefixlen,
                                   gateway=self.config.bridge_ip, host_key_public=host_key[1].decode().strip())
        async with contextlib.AsyncExitStack() as undo:
            tap = await self._attach_network(vm, undo, reporter)
            reporter.stage("restoring from the snapshot template")
            started = time.monotonic()
            handle = await driver.launch(dataclasses.replace(spec, tap=tap, mac=vm.mac))
            vm = self._adopt_launched(vm, driver, handle, tap, "tcg" if spec.accel == "tcg" else "kvm", undo)
            restored = time.monotonic() - started
            reporter.stage("re-homing the clone")
            socket, vsock = driver.agent_socket(handle)
            async with await AgentLink.open(socket, vsock=vsock) as link:
                await link.ping(within=10, every=REPING)
                answered = time.monotonic() - started
                await rehome.rehome(link, identity, host_key[0])
                if vm.workspace is not None and vm.workspace.offline:
                    reporter.stage("mounting the workspace")
                    await mount_workspace(link, vm, spec)
            secs = time.monotonic() - started
            # Where sshd must re-exec to serve the clone's key (OpenSSH 9.8+, see guest.rehome) it takes a
            # few hundred ms under emulation: whoever wants SSH waits for port 22 (connect_info), the agent
            # path does not.
            self.ssh_pending.add(vm.id)
            reporter.log(f"clone re-homed {secs:.2f}s after launch (restored {restored:.2f}s, "
                         f"agent answered {answered:.2f}s)")
            undo.pop_all()
        return vm, secs

    async def provision(self, vm: VM, reporter: Reporter) -> None:
        """Build this start's config disk: banger's SSH key, the host's git identity, ``[[file_sync]]``
        files and the VM's own SSH host key (the guest copies them into place; see guest.provision)."""
        host_key = ssh.read_host_key(Path(vm.vm_dir) / HOST_KEY) or self.make_host_key(vm)
        await self.build_config(Path(vm.vm_dir) / provision.CONFIG_DISK, host_key, reporter)

    async def planned_files(self) -> tuple[list[FileToWrite], list[str]]:
        """What a config disk carries for /root now (banger's key, git identity, ``[[file_sync]]``)."""
        files, warnings = provision.plan_files(
            self.config.file_sync, Path.home(), public_key_line=ssh.public_key_line(self.key_path),
            git_identity=await provision.host_git_identity(),
        )
        return list(files), list(warnings)

    async def config_fingerprint(self) -> str:
        """A digest of everything a guest takes from its config disk and kernel command line at boot,
        apart from its identity: a snapshot template is only good while this is unchanged."""
        files, _ = await self.planned_files()
        digest = hashlib.sha256()
        for f in sorted(files, key=lambda f: str(f.path)):
            digest.update(f"{f.path}\0{f.mode:o}\0{f.uid}:{f.gid}\0{len(f.content)}\0".encode() + f.content)
        c = self.config
        digest.update(f"{c.default_dns}\0{c.vm_defaults.kernel_args}\0{c.cidr}\0{c.bridge_ip}".encode())
        return digest.hexdigest()[:16]

    async def build_config(self, path: Path, host_key: tuple[bytes, bytes], reporter: Reporter) -> None:
        """The config disk at ``path`` with this host's files and ``host_key`` (VMs and templates)."""
        reporter.stage("building the config disk")
        files, warnings = await self.planned_files()
        for warning in warnings:
            reporter.note(f"warning: {warning}")
        await provision.build_config_disk(path, files, host_key)

    def make_host_key(self, vm: VM) -> tuple[bytes, bytes]:
        """A new SSH host key for ``vm``, pinned for its address and ``<name>.vm`` before it ever boots."""
        key = ssh.make_host_key(Path(vm.vm_dir) / HOST_KEY)
        ssh.pin_host_key(self.known_hosts, [vm.ip or "", f"{vm.name}.vm"], key[1].decode())
        return key

    async def stop(self, vm: VM, *, graceful: bool = True, reason: str | None = None,
                   state: str = "stopped") -> VM:
        """Stop ``vm``'s VMM (ACPI/Ctrl-Alt-Del first when ``graceful``) and release its host resources."""
        handles = self.running.get(vm.id) or read_handles(Path(vm.vm_dir))
        if handles is not None:
            driver = self.runtimes.driver(handles.vmm.runtime)
            if graceful:
                await driver.stop(handles.vmm, STOP_GRACE)
            else:
                await driver.kill(handles.vmm)
        await self.release(vm, handles)
        return self.store.update_vm(vm, state=state, reason=reason)

    async def release(self, vm: VM, handles: Handles | None) -> None:
        """Give back a stopped VM's TAP and NAT rules and forget its handles; collects every failure."""
        errors: list[Exception] = []
        steps = []
        if handles is not None:
            steps.append(self.network.release_tap(handles.tap))
            steps.append(self.network.remove_filter(vm.id))
            if handles.nat:
                steps.append(self.network.remove_nat(vm.id))
        for step in steps:
            try:
                await step
            except Exception as exc:
                errors.append(exc)
        self.running.pop(vm.id, None)
        self.ssh_pending.discard(vm.id)
        remove_handles(Path(vm.vm_dir))
        if errors:
            raise ExceptionGroup(f"releasing VM {vm.name!r} left {len(errors)} problem(s)", errors)


def workspace_slot(directory: Path) -> Path:
    """The workspace slot file in ``directory``: the repo image when one was built, else made blank."""
    path = directory / WORKSPACE_DISK
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(workspace_image.SLOT_SIZE)
    return path


def workspace_device(spec: LaunchSpec) -> str:
    """The guest device of the workspace slot: always the last disk."""
    return f"/dev/vd{chr(96 + len(spec.disks))}"


async def mount_workspace(link: AgentLink, vm: VM, spec: LaunchSpec) -> None:
    """Mount the VM's workspace disk at its guest path, through the guest agent."""
    assert vm.workspace is not None
    text = workspace_image.mount_script(workspace_device(spec), vm.workspace.guest_path,
                                        trust_owner=os.geteuid() != 0)
    result = await link.exec(["/bin/sh", "-c", text], timeout=60)
    if result.status != 0:
        raise GuestError(f"mounting the workspace disk at {vm.workspace.guest_path} in VM {vm.name!r} failed "
                         f"({result.status}): {result.stderr.decode(errors='replace')[-300:]}")
