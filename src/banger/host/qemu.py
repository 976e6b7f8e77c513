"""The QEMU driver: ``qemu-system-x86_64 -M microvm`` (KVM or TCG), controlled over QMP.

QEMU is not daemonized: it is started in its own session (so it outlives the daemon) and its pid is the
child's pid. Files in ``vm_dir``: ``qmp.sock`` (QMP), ``console.log`` (serial), ``vmm.log`` (QEMU's own
stdout/stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from banger import script
from banger.errors import HostError
from banger.host import run as host_run
from banger.host.vmm import (
    AGENT_SOCKET,
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

QMP_SOCKET = "qmp.sock"
VHOST_VSOCK = Path("/dev/vhost-vsock")
MACHINE = "microvm,x-option-roms=off,rtc=on"
AGENT_PORT = "org.banger.agent"  # the virtio-serial port banger-agent looks for (its PORT_NAME)


def vhost_vsock_available() -> bool:
    """True when the host can give QEMU guests a vsock (``/dev/vhost-vsock`` exists)."""
    return VHOST_VSOCK.exists()


def escape_opt(value: str | Path) -> str:
    """Escape a value for a QEMU ``key=value,...`` option (commas are doubled)."""
    return str(value).replace(",", ",,")


def host_tsc_khz() -> int | None:
    """The host CPU clock in kHz from /proc/cpuinfo (None when it does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)
    return int(float(match.group(1)) * 1000) if match else None


def guest_cmdline(spec: LaunchSpec, tsc_khz: int | None) -> str:
    """The kernel command line QEMU passes, with the TCG clock workaround when emulating."""
    # Under TCG on a loaded host the guest's PIT-based TSC calibration fails; microvm has no HPET or
    # PM timer to fall back on, so the kernel never gets a timer tick and hangs early in boot.
    # Telling it the TSC rate skips the calibration.
    if spec.accel != "tcg" or tsc_khz is None or "tsc_early_khz=" in spec.cmdline:
        return spec.cmdline
    return f"{spec.cmdline} tsc_early_khz={tsc_khz}"


def qemu_argv(binary: str, spec: LaunchSpec, *, vsock: bool, tsc_khz: int | None = None) -> list[str]:
    """The full QEMU command line for ``spec``; ``vsock`` adds a vhost-vsock device."""
    console, qmp = spec.vm_dir / CONSOLE_LOG, spec.vm_dir / QMP_SOCKET
    machine = MACHINE + (",memory-backend=ram" if spec.memory_file is not None else "")
    argv = [
        binary, "-name", escape_opt(spec.name),
        "-M", machine, "-accel", spec.accel, "-cpu", "host" if spec.accel == "kvm" else "max",
        "-smp", str(spec.vcpu), "-m", str(spec.memory_mib),
        "-nodefaults", "-no-user-config", "-nographic",
        "-serial", f"file:{console}", "-kernel", str(spec.kernel), "-append", guest_cmdline(spec, tsc_khz),
    ]
    if spec.memory_file is not None:
        share = "on" if spec.memory_shared else "off"
        argv += ["-object", f"memory-backend-file,id=ram,size={spec.memory_mib}M,"
                            f"mem-path={escape_opt(spec.memory_file)},share={share}"]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    argv += disk_args(spec) + net_args(spec) + agent_args(spec.vm_dir / AGENT_SOCKET)
    if vsock and spec.vsock_cid is not None:
        argv += ["-device", f"vhost-vsock-device,guest-cid={spec.vsock_cid}"]
    if spec.restore_from is not None:
        # A clone that reboots would come back as its template (the template's kernel command line and
        # config disk): let QEMU exit instead, and `vm start` boot it cold as itself.
        argv += ["-incoming", "defer", "-no-reboot"]
    return in_netns(spec.netns, argv + ["-qmp", f"unix:{escape_opt(qmp)},server=on,wait=off"])


def agent_args(socket: Path) -> list[str]:
    """The guest agent's virtio-serial port, served by QEMU on a Unix socket the daemon connects to."""
    return ["-chardev", f"socket,id=agent,path={escape_opt(socket)},server=on,wait=off",
            "-device", "virtio-serial-device", "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}"]


def disk_args(spec: LaunchSpec) -> list[str]:
    """``-drive``/``-device`` pairs in guest order (vda, vdb, ...)."""
    args: list[str] = []
    for index, disk in enumerate(spec.disks):
        drive = f"id=d{index},file={escape_opt(disk.path)},format={disk.format},if=none"
        args += ["-drive", drive + (",readonly=on" if disk.read_only else ""),
                 "-device", f"virtio-blk-device,drive=d{index}"]
    return args


def net_args(spec: LaunchSpec) -> list[str]:
    """The TAP netdev and its virtio-net device (none without a tap)."""
    if spec.tap is None:
        return []
    return ["-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=n0,mac={spec.guest_mac}"]


@contextlib.asynccontextmanager
async def qmp_session(socket: Path, within: float = 5.0) -> AsyncIterator[QMPClient]:
    """A connected QMP client on ``socket``; connection failures become HostError."""
    client = QMPClient("banger")
    try:
        await asyncio.wait_for(client.connect(str(socket)), within)
    except (QMPError, OSError, EOFError, TimeoutError) as exc:
        await _disconnect(client)
        raise HostError(f"could not connect to QEMU's QMP socket {socket}: {exc!r}",
                        hint="QEMU may have exited; see vmm.log and console.log in the VM directory") from exc
    try:
        yield client
    finally:
        await _disconnect(client)


async def _disconnect(client: QMPClient) -> None:
    # disconnect() re-raises whatever ended the session, e.g. EOFError after `quit`.
    with contextlib.suppress(QMPError, OSError, EOFError):
        await client.disconnect()


async def qmp_execute(socket: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Run one QMP command on a fresh connection and return its result."""
    async with qmp_session(socket) as client:
        try:
            return await client.execute(command, arguments)
        except (QMPError, OSError, EOFError) as exc:
            raise HostError(f"QMP command {command} on {socket} failed: {exc}") from exc


class QemuVMM:
    """The :class:`~banger.host.vmm.VMM` driver for QEMU's microvm machine."""

    runtime = "qemu"

    def __init__(self, binary: str = "qemu-system-x86_64", *, ready_timeout: float = 10.0):
        self.binary = binary
        self.ready_timeout = ready_timeout

    async def launch(self, spec: LaunchSpec) -> Handle:
        """Start QEMU (the guest boots at once) and wait until QMP reports it running."""
        qmp, agent = spec.vm_dir / QMP_SOCKET, spec.vm_dir / AGENT_SOCKET
        check_socket_path(qmp)
        check_socket_path(agent)
        prepare_vm_dir(spec.vm_dir, (qmp, agent))
        vsock = spec.vsock_cid is not None and vhost_vsock_available()
        async with contextlib.AsyncExitStack() as undo:
            argv = qemu_argv(self.binary, spec, vsock=vsock, tsc_khz=host_tsc_khz())
            proc = await self._spawn(argv, spec.vm_dir)
            undo.push_async_callback(self._discard, proc.pid, qmp)
            if spec.restore_from is not None:
                await self.wait_qmp(proc, qmp)
                await self.load_snapshot(proc, qmp, spec.restore_from)
            await self.wait_qmp_running(proc, qmp)
            undo.pop_all()
        extra = {"vsock_cid": spec.vsock_cid} if vsock else {}
        return Handle(runtime=self.runtime, pid=proc.pid, vm_dir=spec.vm_dir, control_socket=qmp,
                      console_log=spec.vm_dir / CONSOLE_LOG, started_at=time.time(), extra=extra)

    async def _spawn(self, argv: list[str], vm_dir: Path) -> asyncio.subprocess.Process:
        log = open_append(vm_dir / VMM_LOG)
        try:
            return await host_run.start(argv, stdout=log, stderr=log)
        finally:
            os.close(log)

    async def wait_qmp(self, proc: asyncio.subprocess.Process, qmp: Path) -> None:
        """Wait until QMP answers at all (a restoring QEMU waits for its state, not running)."""
        await self.wait_qmp_running(proc, qmp, running=False)

    async def load_snapshot(self, proc: asyncio.subprocess.Process, qmp: Path, state: Path) -> None:
        """Load a template's device state into a QEMU started with ``-incoming defer``, then resume it.

        Guest RAM is not in the stream (``x-ignore-shared``): it is the template's memory file, which
        this QEMU maps copy-on-write.
        """
        async with qmp_session(qmp) as client:
            try:
                await client.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "x-ignore-shared", "state": True}]})
                await client.execute("migrate-incoming", {"uri": f"exec:cat {script.quote(state)}"})
            except (QMPError, OSError, EOFError) as exc:
                raise HostError(f"QEMU refused the snapshot {state}: {exc}") from exc
        await self._wait_migration(proc, qmp, f"loading the snapshot {state}")
        # The template was paused when saved, and a loaded guest keeps the runstate it was saved in.
        await qmp_execute(qmp, "cont")

    async def save_snapshot(self, handle: Handle, state: Path) -> None:
        """Pause the guest and write its device state to ``state`` (RAM stays in the shared memory file).

        The guest stays paused: a template is killed after this, never resumed.
        """
        async with qmp_session(handle.control_socket) as client:
            try:
                await client.execute("stop")
                await client.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "x-ignore-shared", "state": True}]})
                await client.execute("migrate", {"uri": f"exec:cat > {script.quote(state)}"})
            except (QMPError, OSError, EOFError) as exc:
                raise HostError(f"QEMU could not snapshot {handle.vm_dir.name}: {exc}") from exc
        await self._wait_migration(None, handle.control_socket, f"saving the snapshot {state}")

    async def _wait_migration(self, proc: asyncio.subprocess.Process | None, qmp: Path, what: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            if proc is not None and proc.returncode is not None:
                raise HostError(f"QEMU exited with status {proc.returncode} while {what}: "
                                f"{log_tail(qmp.parent / VMM_LOG)}")
            info = await qmp_execute(qmp, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise HostError(f"{what} failed: {info.get('error-desc') or status}; "
                                f"{log_tail(qmp.parent / VMM_LOG)}")
            if time.monotonic() > deadline:
                raise HostError(f"{what} did not finish within 60s (status {status})")
            await asyncio.sleep(0.01)

    async def wait_qmp_running(self, proc: asyncio.subprocess.Process, qmp: Path, *, running: bool = True) -> None:
        """Wait until QMP answers ``query-status`` with running; HostError if QEMU exits or hangs."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if proc.returncode is not None:
                raise HostError(f"QEMU exited with status {proc.returncode} at launch: "
                                f"{log_tail(qmp.parent / VMM_LOG)}")
            if is_socket(qmp):
                with contextlib.suppress(HostError):
                    status = await qmp_execute(qmp, "query-status")
                    if status.get("running") or not running:
                        return
            if time.monotonic() > deadline:
                raise HostError(f"QEMU's QMP socket {qmp} did not report a running guest within "
                                f"{self.ready_timeout:g}s: {log_tail(qmp.parent / VMM_LOG)}")
            await asyncio.sleep(0.05)

    async def _discard(self, pid: int, qmp: Path) -> None:
        await kill_and_wait(pid, qmp, "QEMU")
        remove_paths((qmp, qmp.parent / AGENT_SOCKET))

    def agent_socket(self, handle: Handle) -> tuple[Path, bool]:
        """The guest agent's port: QEMU's chardev socket in the VM directory."""
        return handle.vm_dir / AGENT_SOCKET, False

    async def stop(self, handle: Handle, grace: float = 20) -> None:
        """ACPI power button, then QMP ``quit`` after ``grace`` seconds, then SIGKILL."""
        for command, within in (("system_powerdown", grace), ("quit", 5.0)):
            if not self.is_alive(handle):
                break
            with contextlib.suppress(HostError):  # QEMU may close QMP while exiting
                await qmp_execute(handle.control_socket, command)
            if await wait_process_gone(handle.pid, handle.control_socket, within):
                break
        await self.kill(handle)

    async def kill(self, handle: Handle) -> None:
        """SIGKILL QEMU (if it is still ours) and remove its QMP socket."""
        await kill_and_wait(handle.pid, handle.control_socket, f"QEMU for {handle.vm_dir.name}")
        remove_paths((handle.control_socket, handle.vm_dir / AGENT_SOCKET))

    def is_alive(self, handle: Handle) -> bool:
        """True while the pid is a QEMU started with this VM's QMP socket."""
        return process_matches(handle.pid, handle.control_socket)

    async def adopt(self, handle: Handle) -> bool:
        """True when QEMU is alive and answers ``query-status`` over QMP."""
        if not self.is_alive(handle):
            return False
        try:
            await qmp_execute(handle.control_socket, "query-status")
        except HostError:
            return False
        return True

    async def describe(self, handle: Handle) -> dict[str, Any]:
        """Run state, vCPUs, memory and block devices as QEMU reports them."""
        if not self.is_alive(handle):
            raise HostError(f"QEMU for {handle.vm_dir.name} (pid {handle.pid}) is not running")
        async with qmp_session(handle.control_socket) as client:
            try:
                status: Any = await client.execute("query-status")
                cpus: Any = await client.execute("query-cpus-fast")
                memory: Any = await client.execute("query-memory-size-summary")
                block: Any = await client.execute("query-block")
            except (QMPError, OSError, EOFError) as exc:
                raise HostError(f"QMP query on {handle.control_socket} failed: {exc}") from exc
        return {"runtime": self.runtime, "pid": handle.pid, "status": status, "vcpus": len(cpus),
                "memory_mib": memory["base-memory"] >> 20, "drives": [_drive(b) for b in block]}


def _drive(block: dict[str, Any]) -> dict[str, Any]:
    inserted = block.get("inserted") or {}
    return {"id": block.get("qdev") or block.get("device"), "file": inserted.get("file"),
            "read_only": inserted.get("ro"), "format": inserted.get("drv")}
