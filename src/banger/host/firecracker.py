"""The Firecracker driver: one process per VM, configured over its API socket (spec v1.12.1).

Files in ``vm_dir``: ``firecracker.sock`` (API), ``vmm.log`` (Firecracker's logger), ``metrics.json``,
``console.log`` (the guest serial console: Firecracker writes it to stdout; its own lines from before
the logger is configured land there too) and ``vsock.sock`` when a vsock is attached.

Under the ``jailer`` (a :class:`Jail` given to the driver) Firecracker runs chrooted in
``<state>-jail/firecracker/<id>/root`` (see :mod:`banger.host.jail`): the sockets live there, the kernel,
disks, log and metrics are hard-linked in, the API is told chroot-relative paths, and the handle records the
jail's root (``extra["jail_root"]``) by which the process is recognised and its jail removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from banger.errors import ConfigError, HostError, InvalidArgument
from banger.host import jail as jails
from banger.host import run as host_run
from banger.host.privileged import JAILED_API_SOCKET, Privileged
from banger.host.vmm import (
    CONSOLE_LOG,
    VMM_LOG,
    Handle,
    LaunchSpec,
    check_socket_path,
    in_netns,
    is_socket,
    kill_and_wait,
    log_tail,
    open_append,
    prepare_vm_dir,
    process_matches,
    remove_paths,
    wait_process_gone,
)

INSTANCE_START_TIMEOUT = 60.0
API_SOCKET = JAILED_API_SOCKET  # "firecracker.sock", in the VM dir or at the jail's root
VSOCK_SOCKET = "vsock.sock"
METRICS = "metrics.json"
# `banger doctor` accepts versions in [MIN, MAX): the API calls used here exist from 1.8 on.
MIN_VERSION = (1, 8, 0)
MAX_VERSION = (2, 0, 0)
JAILER_HINT = ("install it with `scripts/setup.sh --firecracker` (or set jailer_bin to its path), or set "
               'jailer = "auto" or false in config.toml; nothing was started')


@dataclass(frozen=True)
class FirecrackerPaths:
    """Where one VM's Firecracker files live (host paths); with ``jail_root``, inside the jail."""

    vm_dir: Path
    jail_root: Path | None = None

    def _own(self, name: str) -> Path:
        return (self.jail_root or self.vm_dir) / name

    @property
    def api(self) -> Path:
        return self._own(API_SOCKET)

    @property
    def vsock(self) -> Path:
        return self._own(VSOCK_SOCKET)

    @property
    def log(self) -> Path:
        return self._own(VMM_LOG)

    @property
    def metrics(self) -> Path:
        return self._own(METRICS)

    def seen(self, path: Path) -> str:
        """``path`` as Firecracker names it: chroot-relative when jailed, else unchanged."""
        if self.jail_root is None:
            return str(path)
        return "/" + str(path.relative_to(self.jail_root))

    @property
    def console(self) -> Path:
        return self.vm_dir / CONSOLE_LOG  # Firecracker's stdout: the daemon opens it, never Firecracker


@dataclass(frozen=True)
class Jail:
    """How this driver jails Firecracker: the jailer binary, the chroot base and the user it drops to.

    ``priv`` runs the jailer (it needs root): in-process when the daemon is root, bangerd-root otherwise.
    ``unavailable`` set means ``jailer = true`` cannot be honoured: every launch fails with that message.
    """

    jailer: str
    base: Path
    uid: int
    gid: int
    priv: Privileged | None
    unavailable: str = ""


class FirecrackerAPI:
    """A tiny client for Firecracker's HTTP-over-Unix-socket API; errors become HostError."""

    def __init__(self, socket: Path, timeout: float = 5.0):
        self.socket = socket
        self.timeout = timeout

    def _client(self) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
        return httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=self.timeout)

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON body (None for 204)."""
        call = f"{method} {path}"
        try:
            async with self._client() as client:
                resp = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise HostError(f"Firecracker API call {call} on {self.socket} failed: {exc!r}",
                            hint="the Firecracker process may have exited; see vmm.log in the VM directory"
                            ) from exc
        if resp.status_code >= 300:
            raise HostError(f"Firecracker refused {call}: {_fault(resp)}", data={"status": resp.status_code})
        return resp.json() if resp.content else None

    async def put(self, path: str, body: dict[str, Any]) -> None:
        """PUT ``body`` to ``path``."""
        await self.request("PUT", path, body)

    async def get(self, path: str) -> Any:
        """GET ``path`` and return its JSON body."""
        return await self.request("GET", path)


def _fault(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("fault_message") or resp.text)
    except ValueError:
        return resp.text or f"HTTP {resp.status_code}"


class FirecrackerVMM:
    """The :class:`~banger.host.vmm.VMM` driver for Firecracker."""

    runtime = "firecracker"

    def __init__(self, binary: str = "firecracker", *, api_timeout: float = 5.0, ready_timeout: float = 5.0,
                 jail: Jail | None = None, priv: Privileged | None = None):
        self.binary = binary
        self.jail = jail
        # Removes jails (root's): also of VMs jailed before a config change turned the jailer off.
        self.priv = priv or (jail.priv if jail is not None else None)
        self.api_timeout = api_timeout
        self.ready_timeout = ready_timeout

    async def launch(self, spec: LaunchSpec) -> Handle:
        """Start Firecracker (jailed when configured), configure the VM over the API, send InstanceStart."""
        check_spec(spec)
        if self.jail is not None:
            return await self._launch_jailed(spec, self.jail)
        paths = FirecrackerPaths(spec.vm_dir)
        check_socket_path(paths.api)
        check_socket_path(paths.vsock)
        prepare_vm_dir(spec.vm_dir, (paths.api, paths.vsock))
        for path in (paths.log, paths.metrics):
            path.touch()  # Firecracker opens these but will not create them
        async with contextlib.AsyncExitStack() as undo:
            proc = await self._spawn(spec, paths)
            undo.push_async_callback(self._discard, proc.pid, paths)
            api = FirecrackerAPI(paths.api, self.api_timeout)
            await self.wait_api_ready(lambda: proc.returncode, api, paths.console)
            await self._configure(api, spec, paths)
            undo.pop_all()
        return self._handle(spec, paths, proc.pid)

    async def _launch_jailed(self, spec: LaunchSpec, jail: Jail) -> Handle:
        if jail.unavailable or jail.priv is None:
            raise ConfigError(jail.unavailable or "no way to run the jailer was configured", hint=JAILER_HINT)
        where = jails.JailPaths(jail.base, jails.check_jail_id(spec.vm_id))
        paths = FirecrackerPaths(spec.vm_dir, where.root)
        check_socket_path(paths.api)
        check_socket_path(paths.vsock)
        prepare_vm_dir(spec.vm_dir, ())
        async with contextlib.AsyncExitStack() as undo:
            files: list[tuple[str, Path]] = []
            for name in (VMM_LOG, METRICS):
                (spec.vm_dir / name).touch()
                if os.geteuid() == 0 and jail.uid != 0:  # Firecracker writes them as its own user
                    os.chown(spec.vm_dir / name, jail.uid, jail.gid)
                files.append((name, spec.vm_dir / name))  # linked in: the VM dir shows what Firecracker writes
            inner, more, devices = jail_files(spec, where)
            undo.push_async_callback(jail.priv.remove_jail, spec.vm_id, jail.base)
            pid = await self._run_jailer(jail, where, spec, files + more, devices, paths.console)
            undo.push_async_callback(jails.kill_jailed, pid, where.root, f"Firecracker for {spec.vm_id}")
            api = FirecrackerAPI(paths.api, self.api_timeout)
            await self.wait_api_ready(lambda: None if jails.process_in(pid, where.root) else -1, api,
                                      paths.console)
            await self._configure(api, inner, paths)
            undo.pop_all()
        handle = self._handle(spec, paths, pid)
        handle.extra["jail_root"] = str(where.root)
        return handle

    async def _run_jailer(self, jail: Jail, where: jails.JailPaths, spec: LaunchSpec,
                          files: list[tuple[str, Path]], devices: list[Path], console: Path) -> int:
        assert jail.priv is not None
        exec_file = host_run.which(self.binary) or self.binary
        try:
            return await jail.priv.jail_firecracker(
                spec.vm_id, jail.jailer, os.path.realpath(exec_file), jail.uid, jail.gid, jail.base, spec.netns,
                files, [str(d) for d in devices], console)
        except HostError as exc:
            tail = log_tail(console)
            raise HostError(f"{exc.message}{': ' + tail if tail else ''}", hint=exc.hint) from exc

    async def _configure(self, api: FirecrackerAPI, spec: LaunchSpec, paths: FirecrackerPaths) -> None:
        for endpoint, body in config_calls(spec, paths):
            await api.put(endpoint, body)
        # InstanceStart answers only once Firecracker has built the VM (memory, vCPUs, kernel load). Measured
        # in the nested tier, where the KVM host is itself emulated: over 5 s while that host was still
        # tearing down the previous VM. A slow answer is not a hang, so it gets its own, longer bound.
        start = FirecrackerAPI(api.socket, max(api.timeout, INSTANCE_START_TIMEOUT))
        await start.put("/actions", {"action_type": "InstanceStart"})

    def _handle(self, spec: LaunchSpec, paths: FirecrackerPaths, pid: int) -> Handle:
        return Handle(runtime=self.runtime, pid=pid, vm_dir=spec.vm_dir, control_socket=paths.api,
                      console_log=paths.console, started_at=time.time(),
                      vsock_uds=paths.vsock if spec.vsock_cid is not None else None)

    async def _spawn(self, spec: LaunchSpec, paths: FirecrackerPaths) -> asyncio.subprocess.Process:
        argv = in_netns(spec.netns, [self.binary, "--api-sock", str(paths.api), "--id", spec.vm_id])
        console = open_append(paths.console)
        try:
            return await host_run.start(argv, stdout=console, stderr=console)
        finally:
            os.close(console)

    async def wait_api_ready(self, exited: Callable[[], int | None], api: FirecrackerAPI, console: Path) -> None:
        """Wait until the API socket answers; HostError if Firecracker exits (``exited()`` is not None)
        or stays silent."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if (status := exited()) is not None:
                raise HostError(f"Firecracker exited with status {status} before its API was up: "
                                f"{log_tail(console)}")
            if is_socket(api.socket):
                with contextlib.suppress(HostError):
                    await api.get("/")
                    return
            if time.monotonic() > deadline:
                raise HostError(f"Firecracker's API socket {api.socket} did not answer within "
                                f"{self.ready_timeout:g}s")
            await asyncio.sleep(0.02)

    async def _discard(self, pid: int, paths: FirecrackerPaths) -> None:
        await kill_and_wait(pid, paths.api, "Firecracker")
        remove_paths((paths.api, paths.vsock))

    async def stop(self, handle: Handle, grace: float = 20) -> None:
        """SendCtrlAltDel, wait up to ``grace`` seconds for Firecracker to exit, then SIGKILL."""
        if self.is_alive(handle):
            with contextlib.suppress(HostError):  # a guest already on its way down may not answer
                await FirecrackerAPI(handle.control_socket, self.api_timeout).put(
                    "/actions", {"action_type": "SendCtrlAltDel"})
            if await self._wait_gone(handle, grace):
                await self._clean(handle)
                return
        await self.kill(handle)

    async def kill(self, handle: Handle) -> None:
        """SIGKILL Firecracker (if it is still ours) and remove its sockets (and its jail)."""
        what = f"Firecracker for {handle.vm_dir.name}"
        root = jail_root(handle)
        if root is None:
            await kill_and_wait(handle.pid, handle.control_socket, what)
        else:
            await jails.kill_jailed(handle.pid, root, what)
        await self._clean(handle)

    async def _wait_gone(self, handle: Handle, within: float) -> bool:
        root = jail_root(handle)
        if root is None:
            return await wait_process_gone(handle.pid, handle.control_socket, within)
        return await jails.wait_jailed_gone(handle.pid, root, within)

    async def _clean(self, handle: Handle) -> None:
        remove_paths(_sockets(handle))
        root = jail_root(handle)
        if root is not None:
            base, vm_id = root.parent.parent.parent, root.parent.name
            if self.priv is not None:
                await self.priv.remove_jail(vm_id, base)
            else:  # as root with no seam handed in (tests driving the driver alone)
                jails.remove(jails.JailPaths(base, vm_id))

    def agent_socket(self, handle: Handle) -> tuple[Path, bool]:
        """The guest agent behind Firecracker's vsock socket (a ``CONNECT 52`` opens it)."""
        return handle.vsock_uds or handle.vm_dir / VSOCK_SOCKET, True

    def is_alive(self, handle: Handle) -> bool:
        """True while the pid is this VM's Firecracker: started with its API socket, or jailed in its jail."""
        root = jail_root(handle)
        if root is None:
            return process_matches(handle.pid, handle.control_socket)
        return jails.process_in(handle.pid, root)

    async def adopt(self, handle: Handle) -> bool:
        """True when Firecracker is alive and its API answers."""
        if not self.is_alive(handle):
            return False
        try:
            await FirecrackerAPI(handle.control_socket, self.api_timeout).get("/")
        except HostError:
            return False
        return True

    async def describe(self, handle: Handle) -> dict[str, Any]:
        """Instance info (``GET /``) and full configuration (``GET /vm/config``)."""
        if not self.is_alive(handle):
            raise HostError(f"Firecracker for {handle.vm_dir.name} (pid {handle.pid}) is not running")
        api = FirecrackerAPI(handle.control_socket, self.api_timeout)
        info = {"runtime": self.runtime, "pid": handle.pid, "instance": await api.get("/"),
                "config": await api.get("/vm/config")}
        if (root := jail_root(handle)) is not None:
            info["jail"] = str(root)
        return info


def jail_root(handle: Handle) -> Path | None:
    """The host path of the jail a handle's Firecracker runs in (None when it is not jailed)."""
    root = handle.extra.get("jail_root")
    return None if root is None else Path(root)


def _sockets(handle: Handle) -> tuple[Path, ...]:
    return (handle.control_socket, handle.vsock_uds or handle.vm_dir / VSOCK_SOCKET)


def jail_files(spec: LaunchSpec, where: jails.JailPaths) -> tuple[LaunchSpec, list[tuple[str, Path]], list[Path]]:
    """What of ``spec`` goes into the jail: the spec as seen from inside it (host paths within the jail), the
    (name, host file) pairs root links in (kernel, initrd, regular disks), and the block devices that get a
    node there."""
    files = [("vmlinux", spec.kernel)] + ([] if spec.initrd is None else [("initrd", spec.initrd)])
    disks, devices = [], []
    for index, disk in enumerate(spec.disks):
        if jails.is_block_device(disk.path):
            devices.append(disk.path)
            disks.append(replace(disk, path=jails.device_path(where, disk.path)))
        else:
            files.append((drive_id(index), disk.path))
            disks.append(replace(disk, path=where.root / drive_id(index)))
    inner = replace(spec, kernel=where.root / "vmlinux", initrd=None if spec.initrd is None else where.root / "initrd",
                    disks=tuple(disks))
    return inner, files, devices


def check_spec(spec: LaunchSpec) -> None:
    """Reject what Firecracker cannot do: qcow2 disks, odd vCPU counts above one."""
    for disk in spec.disks:
        if disk.format != "raw":
            raise InvalidArgument(f"Firecracker only boots raw disks; {disk.path} is {disk.format}",
                                  hint="use --runtime qemu for qcow2 overlays")
    if spec.vcpu < 1 or spec.vcpu > 32 or (spec.vcpu > 1 and spec.vcpu % 2):
        raise InvalidArgument(f"Firecracker needs 1 or an even number of vCPUs up to 32, not {spec.vcpu}")


def drive_id(index: int) -> str:
    """The drive id for the ``index``-th disk, named for the guest device (vda, vdb, ...)."""
    return "vd" + chr(ord("a") + index)


def config_calls(spec: LaunchSpec, paths: FirecrackerPaths) -> list[tuple[str, dict[str, Any]]]:
    """The pre-boot API calls, in order, that configure ``spec``."""
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/logger", {"log_path": paths.seen(paths.log), "level": "Info", "show_level": True}),
        ("/metrics", {"metrics_path": paths.seen(paths.metrics)}),
        ("/boot-source", boot_source(spec, paths)),
        ("/machine-config", {"vcpu_count": spec.vcpu, "mem_size_mib": spec.memory_mib}),
    ]
    for index, disk in enumerate(spec.disks):
        # Not a root device: the initrd mounts /dev/vda itself, which keeps drive order = guest order.
        calls.append((f"/drives/{drive_id(index)}", {
            "drive_id": drive_id(index), "path_on_host": paths.seen(disk.path),
            "is_root_device": False, "is_read_only": disk.read_only}))
    if spec.tap is not None:
        calls.append(("/network-interfaces/eth0", {
            "iface_id": "eth0", "host_dev_name": spec.tap, "guest_mac": spec.guest_mac}))
    if spec.vsock_cid is not None:
        calls.append(("/vsock", {"guest_cid": spec.vsock_cid, "uds_path": paths.seen(paths.vsock)}))
    return calls


def boot_source(spec: LaunchSpec, paths: FirecrackerPaths) -> dict[str, Any]:
    """The ``/boot-source`` body."""
    body: dict[str, Any] = {"kernel_image_path": paths.seen(spec.kernel), "boot_args": spec.cmdline}
    if spec.initrd is not None:
        body["initrd_path"] = paths.seen(spec.initrd)
    return body


def parse_version(text: str) -> tuple[int, int, int]:
    """``(1, 12, 1)`` from ``firecracker --version`` output ("Firecracker v1.12.1")."""
    match = re.search(r"Firecracker v(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise HostError(f"could not read a Firecracker version from {text.strip()[:80]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def version_supported(version: tuple[int, int, int]) -> bool:
    """True when banger supports this Firecracker version (1.8 <= v < 2.0)."""
    return MIN_VERSION <= version < MAX_VERSION


def check_version(version: tuple[int, int, int]) -> None:
    """HostError unless ``version`` is supported."""
    if not version_supported(version):
        shown = ".".join(map(str, version))
        raise HostError(f"Firecracker {shown} is not supported (banger needs >= 1.8 and < 2.0)",
                        hint="install a Firecracker 1.x release >= 1.8, or use --runtime qemu")


async def firecracker_version(binary: str) -> tuple[int, int, int]:
    """The version of the Firecracker binary at ``binary``."""
    done = await host_run.run([binary, "--version"], timeout=10)
    return parse_version(done.out)
