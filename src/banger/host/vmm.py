"""The one interface both VMM drivers (Firecracker, QEMU) implement, and the process plumbing they share.

A driver turns a :class:`LaunchSpec` into a running VMM process and a :class:`Handle` that the daemon
persists to ``<vm_dir>/handles.json``. VMM processes run in their own session so they outlive the daemon;
their serial console goes to ``<vm_dir>/console.log`` and their own log to ``<vm_dir>/vmm.log``.
A pid alone is never trusted: a process is "ours" only while ``/proc/<pid>/cmdline`` names its control
socket, so a recycled pid is not mistaken for a VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from banger.errors import HostError, InvalidArgument
from banger.host.netns import netns_argv
from banger.ipam import mac_for

CONSOLE_LOG = "console.log"
VMM_LOG = "vmm.log"
AGENT_SOCKET = "agent.sock"  # QEMU: the guest agent's virtio-serial port (Firecracker: its vsock socket)
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Disk:
    """One guest block device; the order in ``LaunchSpec.disks`` is the guest order (vda, vdb, ...)."""

    path: Path
    read_only: bool = False
    format: Literal["raw", "qcow2"] = "raw"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a driver needs to start one VM."""

    vm_id: str
    name: str
    kernel: Path
    initrd: Path | None
    cmdline: str
    disks: tuple[Disk, ...]
    tap: str | None
    mac: str | None
    vcpu: int
    memory_mib: int
    vm_dir: Path
    vsock_cid: int | None = None
    accel: Literal["kvm", "tcg"] = "tcg"  # qemu only
    netns: str | None = None  # run the VMM inside this network namespace (`ip netns exec`)
    # Snapshot templates and clones (qemu): guest RAM in this file, shared (a template writes it) or
    # private copy-on-write (a clone reads it), and the clone's device state to load instead of booting.
    memory_file: Path | None = None
    memory_shared: bool = False
    restore_from: Path | None = None

    @property
    def guest_mac(self) -> str:
        """The MAC given, or a stable one derived from the VM id."""
        return self.mac or mac_for(self.vm_id)


@dataclass
class Handle:
    """A running VMM as the daemon remembers it across restarts."""

    runtime: str
    pid: int
    vm_dir: Path
    control_socket: Path
    console_log: Path
    started_at: float
    vsock_uds: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_json` reverses it."""
        return {
            "runtime": self.runtime,
            "pid": self.pid,
            "vm_dir": str(self.vm_dir),
            "control_socket": str(self.control_socket),
            "console_log": str(self.console_log),
            "started_at": self.started_at,
            "vsock_uds": None if self.vsock_uds is None else str(self.vsock_uds),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Handle:
        """Rebuild a handle written by :meth:`to_json`."""
        vsock = data.get("vsock_uds")
        return cls(
            runtime=str(data["runtime"]),
            pid=int(data["pid"]),
            vm_dir=Path(data["vm_dir"]),
            control_socket=Path(data["control_socket"]),
            console_log=Path(data["console_log"]),
            started_at=float(data["started_at"]),
            vsock_uds=None if vsock is None else Path(vsock),
            extra=dict(data.get("extra") or {}),
        )


class VMM(Protocol):
    """What the daemon needs from a virtual machine monitor."""

    runtime: str

    async def launch(self, spec: LaunchSpec) -> Handle:
        """Start the VMM and the guest; on failure nothing is left running."""
        ...

    async def stop(self, handle: Handle, grace: float = 20) -> None:
        """Ask the guest to shut down, kill the VMM after ``grace`` seconds; return once it is gone."""
        ...

    async def kill(self, handle: Handle) -> None:
        """Kill the VMM now and return once it is gone."""
        ...

    def is_alive(self, handle: Handle) -> bool:
        """True while the handle's process exists and is this VMM (not a recycled pid)."""
        ...

    async def adopt(self, handle: Handle) -> bool:
        """After a daemon restart: True when the process is alive and its control socket answers."""
        ...

    async def describe(self, handle: Handle) -> dict[str, Any]:
        """The configuration and state the VMM itself reports."""
        ...

    def agent_socket(self, handle: Handle) -> tuple[Path, bool]:
        """Where the guest agent is reached: the socket, and whether it is a vsock one (``CONNECT``)."""
        ...


def driver_for(runtime: str, *, firecracker_bin: str, qemu_bin: str) -> VMM:
    """The driver for ``runtime`` ("firecracker" or "qemu")."""
    # Imported here because both driver modules import this one.
    if runtime == "firecracker":
        from banger.host.firecracker import FirecrackerVMM

        return FirecrackerVMM(firecracker_bin)
    if runtime == "qemu":
        from banger.host.qemu import QemuVMM

        return QemuVMM(qemu_bin)
    raise InvalidArgument(f"unknown VM runtime {runtime!r}", hint="use 'firecracker' or 'qemu'")


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` run inside network namespace ``netns`` (unchanged without one); the pid stays the VMM's."""
    return argv if netns is None else netns_argv(netns, argv)


def check_socket_path(path: Path) -> None:
    """Raise InvalidArgument when ``path`` is too long to bind a Unix socket to."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise InvalidArgument(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes, the Unix socket limit",
            hint="use a shorter state directory (BANGER_STATE_DIR or the config's state_dir)",
        )


def is_socket(path: Path) -> bool:
    """True when ``path`` exists and is a Unix socket."""
    return path.is_socket()


def prepare_vm_dir(vm_dir: Path, stale: tuple[Path, ...]) -> None:
    """Create ``vm_dir``, remove stale sockets of an earlier run and start fresh console and VMM logs."""
    vm_dir.mkdir(parents=True, exist_ok=True)
    remove_paths(stale)
    for name in (CONSOLE_LOG, VMM_LOG):
        (vm_dir / name).write_bytes(b"")


def remove_paths(paths: tuple[Path, ...] | list[Path]) -> None:
    """Remove each path that exists (sockets, pid files)."""
    for path in paths:
        path.unlink(missing_ok=True)


def process_matches(pid: int, marker: Path) -> bool:
    """True when ``pid`` is a live (non-zombie) process whose command line mentions ``marker``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A zombie's cmdline is empty, so an exited, unreaped VMM reads as dead.
    return os.fsencode(marker) in cmdline


def signal_if(pid: int, ours: Callable[[], bool], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` only while ``ours()`` says it is still the process meant (not a recycled pid)."""
    if ours():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def wait_gone(ours: Callable[[], bool], within: float) -> bool:
    """Poll until ``ours()`` is false; False if it is still true after ``within`` seconds."""
    deadline = time.monotonic() + within
    while ours():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def kill_until_gone(pid: int, ours: Callable[[], bool], what: str) -> None:
    """SIGKILL ``pid`` (while ``ours()``) and wait for it to disappear; HostError if it will not."""
    signal_if(pid, ours)
    if not await wait_gone(ours, 10):
        raise HostError(f"{what} (pid {pid}) is still running 10s after SIGKILL",
                        hint="it may be stuck in the kernel (D state); check `ps -o stat,wchan -p PID`")


def signal_process(pid: int, marker: Path, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` only if it is still the process identified by ``marker``."""
    signal_if(pid, lambda: process_matches(pid, marker), sig)


async def wait_process_gone(pid: int, marker: Path, within: float) -> bool:
    """Poll until the process identified by ``marker`` is gone; False if it is still there after ``within``."""
    return await wait_gone(lambda: process_matches(pid, marker), within)


async def kill_and_wait(pid: int, marker: Path, what: str) -> None:
    """SIGKILL the process identified by ``marker`` and wait for it to disappear; HostError if it will not."""
    await kill_until_gone(pid, lambda: process_matches(pid, marker), what)


def log_tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of a log file, joined with '; ' (empty if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "; ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def open_append(path: Path) -> int:
    """A close-on-exec, appending file descriptor on ``path`` (created if missing), for a child's output."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
