"""Firecracker's ``jailer``: the jail layout, the jailed launch, and telling a jailed VMM.

Layout: the chroot base is a sibling of the state dir, ``<state>-jail`` (``/var/lib/banger-jail`` for a
system install), root's and not writable by anyone else, with root-owned parents: the jailer runs as root
and, before it pivots into the chroot, copies Firecracker into it and bind-mounts it by path. Had the owner
any say over a path component there (as it has over everything under its state dir), it could turn that
copy or the jailer's later ``chown /`` onto a host file by swapping in a symlink. So root makes the whole
jail, ``<base>/firecracker/ID/root``, and fills it before the jailer runs: what Firecracker opens is
hard-linked in from descriptors the daemon passes (``vmlinux``, ``initrd``, each regular disk as ``vda``,
``vdb``..., ``vmm.log``, ``metrics.json``: the same inodes, so a work disk's writes land in the VM's own
file), and each block device (a dm-snapshot root, a loop) gets a node in ``/dev``, the VMM user's. Only
then does the jailer add ``/dev/{kvm,net/tun}``, a copy of the firecracker binary and ``firecracker.pid``,
give ``/`` to ``--uid/--gid`` (after its pivot, where a symlink can no longer lead out) and run Firecracker
in new mount and pid namespaces (``--new-pid-ns``: the jailer exits once Firecracker runs). Firecracker
binds ``/firecracker.sock`` and ``/vsock.sock`` in the jail; the daemon uses their host paths (the base,
``firecracker`` and ``ID`` are 0711, so the owner may pass through but not change anything).

A jailed process is recognised by its root directory: ``/proc/PID/root`` is the jail's ``root`` (same
device and inode), which no recycled pid can fake. Removing a jail is root's too (``rmtree`` never follows
a symlink the VMM user may have left in ``root``).
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


FILE_RE = re.compile(r"^(vmlinux|initrd|vmm\.log|metrics\.json|vd[a-z])$")  # what goes into a jail, by name
DEVICE_RE = re.compile(r"^(dm-[0-9]{1,4}|loop[0-9]{1,4})$")


def jail_base(state_dir: Path) -> Path:
    """The chroot base handed to ``--chroot-base-dir``: beside the state dir, never inside it."""
    return state_dir.parent / f"{state_dir.name}-{JAIL_DIR}"


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


def _root_only(fd: int, what: Path, *, sticky_ok: bool = False) -> None:
    """Refuse a directory anyone but root could change (a sticky one like /tmp may do for the parent: nobody
    can rename or remove what root made in it)."""
    st = os.fstat(fd)
    if st.st_uid != 0 or (st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX)):
        raise HostError(f"{what} must be root's and writable by nobody else (it is uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):o})", hint=f"remove {what}; banger makes it again")


def _mkdir_at(name: str, dir_fd: int, mode: int) -> int:
    """Make (if missing) and open directory ``name`` under ``dir_fd``, refusing a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=dir_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    os.fchmod(fd, mode)
    return fd


def prepare(jail: JailPaths, files: list[tuple[str, Path, int]], devices: list[Path], uid: int, gid: int) -> None:
    """Make VM ``jail`` afresh as root, before the jailer runs (needs root).

    ``files``: (name in the jail, path, open descriptor of that path) triples, hard-linked in; ``devices``:
    block devices that get a node in the jail's ``/dev`` (mode 0600, ``uid``'s). Every step goes through
    directory descriptors opened without following symlinks, from a base whose parents are root's alone.

    A file is linked by its path (never following a final symlink), then kept only if the new link is the
    descriptor's very inode: linking the descriptor itself (``/proc/self/fd/N``) would be tighter, but
    across mount namespaces (bangerd-root's unit has its own, for PrivateTmp) it fails with EXDEV. Whatever
    a swapped path could make the helper link is refused by that check before the jailer ever runs.
    """
    remove(jail)
    parent_fd = open_dir_nofollow(jail.base.parent)
    opened: list[int] = [parent_fd]
    try:
        _root_only(parent_fd, jail.base.parent, sticky_ok=True)
        base_fd = _mkdir_at(jail.base.name, parent_fd, 0o711)
        opened.append(base_fd)
        _root_only(base_fd, jail.base)
        exec_fd = _mkdir_at(EXEC_NAME, base_fd, 0o711)
        opened.append(exec_fd)
        id_fd = _mkdir_at(check_jail_id(jail.vm_id), exec_fd, 0o711)
        opened.append(id_fd)
        root_fd = _mkdir_at("root", id_fd, 0o700)
        opened.append(root_fd)
        for name, path, fd in files:
            if not FILE_RE.match(name):
                raise InvalidArgument(f"{name!r} is not a file banger puts in a jail")
            try:
                os.link(path, name, dst_dir_fd=root_fd, follow_symlinks=False)
                linked = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                held = os.fstat(fd)
                if (linked.st_dev, linked.st_ino) != (held.st_dev, held.st_ino):
                    os.unlink(name, dir_fd=root_fd)
                    raise HostError(f"{path} changed while it was linked into the jail {jail.root}")
            except OSError as exc:
                hint = (f"the jail ({jail.base}) sits beside the state dir, so kernels, images and VM disks must be "
                        "on its filesystem; or set jailer = false in config.toml") if exc.errno == errno.EXDEV \
                    else None
                raise HostError(f"cannot hard-link {name} into the jail {jail.root}: {exc.strerror}",
                                hint=hint) from exc
        if devices:
            dev_fd = _mkdir_at("dev", root_fd, 0o755)
            opened.append(dev_fd)
            for device in devices:
                st = os.stat(device)
                name = Path(os.path.realpath(device)).name
                if not stat.S_ISBLK(st.st_mode) or not DEVICE_RE.match(name):
                    raise HostError(f"{device} is not a dm or loop block device")
                os.mknod(name, stat.S_IFBLK | 0o600, st.st_rdev, dir_fd=dev_fd)
                os.chown(name, uid, gid, dir_fd=dev_fd, follow_symlinks=False)
    except BaseException:
        remove(jail)
        raise
    finally:
        for fd in opened:
            os.close(fd)


def remove(jail: JailPaths) -> None:
    """Remove the VM's jail directory, if any (idempotent; never follows a symlink inside it)."""
    if jail.dir.is_symlink():
        jail.dir.unlink()
    elif jail.dir.exists():
        shutil.rmtree(jail.dir)


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
