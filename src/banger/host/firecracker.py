"""The Firecracker driver: one process per VM, configured over its API socket (spec v1.12.1).

Files in ``vm_dir``: ``firecracker.sock`` (API), ``vmm.log`` (Firecracker's logger), ``metrics.json``,
``console.log`` (the guest serial console: Firecracker writes it to stdout; its own lines from before
the logger is configured land there too) and ``vsock.sock`` when a vsock is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from banger.errors import HostError, InvalidArgument
from banger.host import run as host_run
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

API_SOCKET = "firecracker.sock"
VSOCK_SOCKET = "vsock.sock"
METRICS = "metrics.json"
# `banger doctor` accepts versions in [MIN, MAX): the API calls used here exist from 1.8 on.
MIN_VERSION = (1, 8, 0)
MAX_VERSION = (2, 0, 0)


@dataclass(frozen=True)
class FirecrackerPaths:
    """Where one VM's Firecracker files live."""

    vm_dir: Path

    @property
    def api(self) -> Path:
        return self.vm_dir / API_SOCKET

    @property
    def vsock(self) -> Path:
        return self.vm_dir / VSOCK_SOCKET

    @property
    def log(self) -> Path:
        return self.vm_dir / VMM_LOG

    @property
    def metrics(self) -> Path:
        return self.vm_dir / METRICS

    @property
    def console(self) -> Path:
        return self.vm_dir / CONSOLE_LOG


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

    def __init__(self, binary: str = "firecracker", *, api_timeout: float = 5.0, ready_timeout: float = 5.0):
        self.binary = binary
        self.api_timeout = api_timeout
        self.ready_timeout = ready_timeout

    async def launch(self, spec: LaunchSpec) -> Handle:
        """Start Firecracker, configure the VM over the API and send InstanceStart."""
        check_spec(spec)
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
            await self.wait_api_ready(proc, api)
            for endpoint, body in config_calls(spec, paths):
                await api.put(endpoint, body)
            await api.put("/actions", {"action_type": "InstanceStart"})
            undo.pop_all()
        return Handle(runtime=self.runtime, pid=proc.pid, vm_dir=spec.vm_dir, control_socket=paths.api,
                      console_log=paths.console, started_at=time.time(),
                      vsock_uds=paths.vsock if spec.vsock_cid is not None else None)

    async def _spawn(self, spec: LaunchSpec, paths: FirecrackerPaths) -> asyncio.subprocess.Process:
        argv = in_netns(spec.netns, [self.binary, "--api-sock", str(paths.api), "--id", spec.vm_id])
        console = open_append(paths.console)
        try:
            return await host_run.start(argv, stdout=console, stderr=console)
        finally:
            os.close(console)

    async def wait_api_ready(self, proc: asyncio.subprocess.Process, api: FirecrackerAPI) -> None:
        """Wait until the API socket answers; HostError if Firecracker exits or stays silent."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if proc.returncode is not None:
                raise HostError(f"Firecracker exited with status {proc.returncode} before its API was up: "
                                f"{log_tail(api.socket.parent / CONSOLE_LOG)}")
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
            if await wait_process_gone(handle.pid, handle.control_socket, grace):
                remove_paths(_sockets(handle))
                return
        await self.kill(handle)

    async def kill(self, handle: Handle) -> None:
        """SIGKILL Firecracker (if it is still ours) and remove its sockets."""
        await kill_and_wait(handle.pid, handle.control_socket, f"Firecracker for {handle.vm_dir.name}")
        remove_paths(_sockets(handle))

    def agent_socket(self, handle: Handle) -> tuple[Path, bool]:
        """The guest agent behind Firecracker's vsock socket (a ``CONNECT 52`` opens it)."""
        return handle.vm_dir / VSOCK_SOCKET, True

    def is_alive(self, handle: Handle) -> bool:
        """True while the pid is a Firecracker started with this VM's API socket."""
        return process_matches(handle.pid, handle.control_socket)

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
        return {"runtime": self.runtime, "pid": handle.pid, "instance": await api.get("/"),
                "config": await api.get("/vm/config")}


def _sockets(handle: Handle) -> tuple[Path, ...]:
    return (handle.control_socket, handle.vm_dir / VSOCK_SOCKET)


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
        ("/logger", {"log_path": str(paths.log), "level": "Info", "show_level": True}),
        ("/metrics", {"metrics_path": str(paths.metrics)}),
        ("/boot-source", boot_source(spec)),
        ("/machine-config", {"vcpu_count": spec.vcpu, "mem_size_mib": spec.memory_mib}),
    ]
    for index, disk in enumerate(spec.disks):
        # Not a root device: the initrd mounts /dev/vda itself, which keeps drive order = guest order.
        calls.append((f"/drives/{drive_id(index)}", {
            "drive_id": drive_id(index), "path_on_host": str(disk.path),
            "is_root_device": False, "is_read_only": disk.read_only}))
    if spec.tap is not None:
        calls.append(("/network-interfaces/eth0", {
            "iface_id": "eth0", "host_dev_name": spec.tap, "guest_mac": spec.guest_mac}))
    if spec.vsock_cid is not None:
        calls.append(("/vsock", {"guest_cid": spec.vsock_cid, "uds_path": str(paths.vsock)}))
    return calls


def boot_source(spec: LaunchSpec) -> dict[str, Any]:
    """The ``/boot-source`` body."""
    body: dict[str, Any] = {"kernel_image_path": str(spec.kernel), "boot_args": spec.cmdline}
    if spec.initrd is not None:
        body["initrd_path"] = str(spec.initrd)
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
