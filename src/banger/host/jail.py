"""Firecracker's ``jailer``: the jail layout under the state dir, the jailed launch, and telling a jailed VMM.

Layout: the chroot base is ``<state>/jail``, so the jailer's chroot for VM ``ID`` is
``<state>/jail/firecracker/ID/root``. The daemon makes that directory (as the user the VMM will run as)
and hard-links in what Firecracker opens: ``vmlinux``, ``initrd``, each regular disk as ``vda``, ``vdb``...
(the same inodes, so a work disk's writes land in the VM's own file) and ``vmm.log``/``metrics.json``
from the VM dir. Block devices (a dm-snapshot root, a loop) get a device node ``/dev/<name>`` made in
the jail after the jailer ran. The jailer adds ``/dev/{kvm,net/tun,urandom,userfaultfd}``, a copy of the
firecracker binary and ``firecracker.pid``, then runs it as ``--uid/--gid`` in a new mount and pid
namespace (``--new-pid-ns``: the jailer itself exits once Firecracker is running; the pid file names it).
Firecracker binds ``/api.sock`` and ``/vsock.sock`` in the jail; the daemon uses their host paths.

A jailed process is recognised by its root directory: ``/proc/PID/root`` is the jail's ``root`` (same
device and inode), which no recycled pid can fake. Everything in the jail belongs to the VMM's user
(the jailer makes ``root`` theirs), so the daemon removes the whole ``firecracker/ID`` directory itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from banger.errors import HostError, InvalidArgument
from banger.host import run as host_run

JAIL_DIR = "jail"
EXEC_NAME = "firecracker"  # the jailer names the chroot after the exec file, and wants "firecracker" in it
PID_FILE = f"{EXEC_NAME}.pid"
# The jailer's own rule for --id: alphanumerics and hyphens, at most 64 characters.
JAIL_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
JAILER_TIMEOUT = 10.0  # the jailer sets up and forks in milliseconds; this bounds a wedged one


def jail_base(state_dir: Path) -> Path:
    """The chroot base handed to ``--chroot-base-dir``."""
    return state_dir / JAIL_DIR


@dataclass(frozen=True)
class JailPaths:
    """Where VM ``vm_id``'s jail lives on the host."""

    base: Path
    vm_id: str

    @property
    def dir(self) -> Path:
        """``<base>/firecracker/<id>``: removed whole when the VM stops."""
        return self.base / EXEC_NAME / self.vm_id

    @property
    def root(self) -> Path:
        """The chroot: Firecracker's ``/``."""
        return self.dir / "root"

    @property
    def pid_file(self) -> Path:
        return self.root / PID_FILE


def check_jail_id(vm_id: str) -> str:
    """InvalidArgument unless the jailer accepts ``vm_id`` as ``--id``."""
    if not JAIL_ID_RE.match(vm_id):
        raise InvalidArgument(f"the jailer needs an id of letters, digits and '-' (at most 64), not {vm_id!r}")
    return vm_id


def prepare(jail: JailPaths) -> None:
    """A fresh, empty chroot directory (anything an earlier run left is removed first)."""
    remove(jail)
    jail.root.mkdir(parents=True, mode=0o700)


def remove(jail: JailPaths) -> None:
    """Remove the VM's jail directory, if any (idempotent)."""
    if jail.dir.is_symlink():
        jail.dir.unlink()
    elif jail.dir.exists():
        shutil.rmtree(jail.dir)


def link_in(jail: JailPaths, source: Path, name: str) -> Path:
    """Hard-link regular file ``source`` into the jail as ``/name``; its host path inside the jail."""
    real = Path(os.path.realpath(source))
    target = jail.root / name
    try:
        os.link(real, target)
    except FileNotFoundError as exc:
        raise HostError(f"cannot put {source} into the jail: it does not exist") from exc
    except OSError as exc:
        hint = ("the jail lives under the state dir, so kernels, images and VM disks must be on its filesystem;"
                " or set jailer = false in config.toml") if exc.errno == errno.EXDEV else None
        raise HostError(f"cannot hard-link {real} into the jail {jail.root}: {exc.strerror}", hint=hint) from exc
    return target


def is_block_device(path: Path) -> bool:
    """True when ``path`` (followed) is a block device (a dm or loop device needs a node in the jail)."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def device_path(jail: JailPaths, device: Path) -> Path:
    """Where block device ``device``'s node appears in the jail (host path): ``<root>/dev/<name>``."""
    return jail.root / "dev" / Path(os.path.realpath(device)).name


def jailer_argv(jailer: str, exec_file: str, jail: JailPaths, uid: int, gid: int, netns: str | None,
                api: str) -> list[str]:
    """The jailer's command line (Firecracker's own arguments follow ``--``)."""
    argv = [jailer, "--id", check_jail_id(jail.vm_id), "--exec-file", exec_file, "--uid", str(uid),
            "--gid", str(gid), "--chroot-base-dir", str(jail.base), "--new-pid-ns"]
    if netns is not None:
        argv += ["--netns", f"/run/netns/{netns}"]
    return [*argv, "--", "--api-sock", api]


async def run_jailer(argv: list[str], jail: JailPaths, console_fd: int) -> int:
    """Run the jailer until it has forked Firecracker into the jail; Firecracker's pid (host view)."""
    jail.pid_file.unlink(missing_ok=True)
    proc = await host_run.start(argv, stdout=console_fd, stderr=console_fd)
    try:
        rc = await asyncio.wait_for(proc.wait(), JAILER_TIMEOUT)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise HostError(f"the jailer for {jail.vm_id} did not hand over to Firecracker within "
                        f"{JAILER_TIMEOUT:g}s") from exc
    if rc != 0:
        raise HostError(f"the jailer for {jail.vm_id} exited with status {rc}",
                        hint="its own message is at the end of the VM's console.log")
    try:
        return int(jail.pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise HostError(f"the jailer for {jail.vm_id} left no readable {jail.pid_file}") from exc


def make_device_nodes(jail: JailPaths, devices: list[Path], uid: int, gid: int) -> list[Path]:
    """A node for each block device in the jail's ``/dev``, the VMM user's, mode 0600 (needs root).

    The jail's ``/dev`` belongs to the VMM's user, so it is opened without following any symlink on the
    way, and nodes are made relative to that descriptor.
    """
    made = []
    dev_fd = open_dir_nofollow(jail.root / "dev")
    try:
        for device in devices:
            st = os.stat(device)
            if not stat.S_ISBLK(st.st_mode):
                raise HostError(f"{device} is not a block device")
            name = Path(os.path.realpath(device)).name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dev_fd)
            os.mknod(name, stat.S_IFBLK | 0o600, st.st_rdev, dir_fd=dev_fd)
            os.chown(name, uid, gid, dir_fd=dev_fd, follow_symlinks=False)
            made.append(jail.root / "dev" / name)
    finally:
        os.close(dev_fd)
    return made


def open_dir_nofollow(path: Path) -> int:
    """A descriptor of directory ``path`` opened component by component, refusing any symlink."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in Path(os.path.abspath(path)).parts[1:]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        raise HostError(f"{path} is not a plain directory (a symlink on the way?): {exc.strerror}") from exc
    return fd


def _identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def process_in(pid: int, root: Path) -> bool:
    """True when ``pid`` is a live process whose root directory is ``root`` (a jailed VMM of that jail)."""
    mine = _identity(root)
    return mine is not None and _identity(f"/proc/{pid}/root") == mine


def signal_jailed(pid: int, root: Path, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` only while it is the process jailed in ``root``."""
    if process_in(pid, root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def wait_jailed_gone(pid: int, root: Path, within: float) -> bool:
    """Poll until the jailed process is gone; False if it is still there after ``within`` seconds."""
    deadline = time.monotonic() + within
    while process_in(pid, root):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def kill_jailed(pid: int, root: Path, what: str) -> None:
    """SIGKILL the jailed process and wait for it to disappear; HostError if it will not."""
    signal_jailed(pid, root)
    if not await wait_jailed_gone(pid, root, 10):
        raise HostError(f"{what} (pid {pid}) is still running 10s after SIGKILL",
                        hint="it may be stuck in the kernel (D state); check `ps -o stat,wchan -p PID`")


def jail_roots(base: Path) -> dict[tuple[int, int], str]:
    """(device, inode) of every jail's ``root`` under ``base`` -> the VM id it belongs to."""
    found: dict[tuple[int, int], str] = {}
    parent = base / EXEC_NAME
    if parent.is_dir():
        for entry in parent.iterdir():
            ident = _identity(entry / "root")
            if ident is not None and not entry.is_symlink():
                found[ident] = entry.name
    return found


def jailed_pids(base: Path) -> dict[int, str]:
    """Pids of processes jailed under ``base`` -> their VM id (the start-up sweep's view)."""
    roots = jail_roots(base)
    found = {}
    if roots:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                ident = _identity(entry / "root")
                if ident in roots:
                    found[int(entry.name)] = roots[ident]
    return found


def stale_jails(base: Path, keep: set[str]) -> list[Path]:
    """Jail directories of VMs not in ``keep``."""
    parent = base / EXEC_NAME
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.name not in keep)
