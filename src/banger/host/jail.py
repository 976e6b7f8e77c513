"""Firecracker's ``jailer``: the jail layout, the jailed launch, and telling a jailed VMM.

Layout: the chroot base is a sibling of the state dir, ``<state>-jail`` (``/var/lib/banger-jail`` for a
system install), root's and not writable by anyone else, with root-owned parents: the jailer runs as root
and, before it pivots into the chroot, copies Firecracker into it and bind-mounts it by path. Had the owner
any say over a path component there (as it has over everything under its state dir), it could turn that
copy or the jailer's later ``chown /`` onto a host file by swapping in a symlink. So root makes the whole
jail, ``<base>/firecracker/ID/root``, and fills it before the jailer runs: what Firecracker opens is
hard-linked in, checked against descriptors the daemon passes (``vmlinux``, ``initrd``, each regular disk as ``vda``,
``vdb``..., ``vmm.log``, ``metrics.json``: the same inodes, so a work disk's writes land in the VM's own
file), and each block device (a dm-snapshot root, a loop) gets a node in ``/dev``, the VMM user's;
``/dev`` is a tmpfs of the jail's own, so no node made there can be hard-linked anywhere else and outlive
the VM (a kept node would reach whatever device later gets its number). Only then does the jailer add
``/dev/{kvm,net/tun,urandom,userfaultfd}``, a copy of the firecracker binary and ``firecracker.pid``, give
``/`` to ``--uid/--gid`` (after its pivot, where a symlink can no longer lead out) and run Firecracker in
new mount and pid namespaces (``--new-pid-ns``: the jailer exits once Firecracker runs). Firecracker
binds ``/firecracker.sock`` and ``/vsock.sock`` in the jail; the daemon uses their host paths (the base,
``firecracker`` and ``ID`` are 0711, so the owner may pass through but not change anything).

A jailed process is recognised by its root directory: ``/proc/PID/root`` is the jail's ``root`` (same
device and inode), which no recycled pid can fake (a process of the VMM's user that chroots into its own
jail would pass too, which gains it nothing: it is then treated as that VM's VMM). Removing a jail is
root's too: every process in it is killed first, its ``/dev`` unmounted, and ``rm --one-file-system``
never follows a symlink the VMM's user may have left in ``root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from banger.errors import HostError, InvalidArgument
from banger.host import run as host_run
from banger.host.vmm import kill_until_gone, signal_if, wait_gone

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
    block devices that get a node in the jail's ``/dev`` (mode 0600, ``uid``'s). The directories are made
    through descriptors opened without following symlinks, under a base checked to be root's alone; the
    ``/dev`` mount goes by path, through directories only root can change at that point.

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
        # /dev is a small tmpfs of the jail's own: every node in it (ours, and the jailer's kvm, net/tun,
        # urandom, userfaultfd, which it gives the VMM's user) goes with the jail, and a hard link to a node
        # from anywhere else fails with EXDEV, so no node outlives the VM it was made for.
        os.close(_mkdir_at("dev", root_fd, 0o755))
        _mount_dev(jail)
        dev_fd = os.open("dev", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
        opened.append(dev_fd)
        if devices:
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


MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MNT_DETACH, UMOUNT_NOFOLLOW = 0x2, 0x8


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_dev(jail: JailPaths) -> None:
    """A tmpfs on the jail's ``/dev`` (the path is root's all the way down at this point)."""
    target = str(jail.root / "dev").encode()
    if _libc().mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NOEXEC, b"mode=0755,size=1m") != 0:
        err = ctypes.get_errno()
        raise HostError(f"cannot mount a tmpfs on {jail.root / 'dev'}: {os.strerror(err)}")


def _unmount_dev(jail: JailPaths) -> None:
    """Detach the jail's ``/dev`` tmpfs, if mounted; never through a symlink the VMM's user left there."""
    dev = jail.root / "dev"
    with contextlib.suppress(OSError):
        if not dev.is_symlink() and os.path.ismount(dev):
            if _libc().umount2(str(dev).encode(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
                err = ctypes.get_errno()
                raise HostError(f"cannot unmount {dev}: {os.strerror(err)}")


def pids_in(root: Path) -> list[int]:
    """Every process whose root directory is ``root`` (a jailed VMM, or anything that chrooted there)."""
    mine = _identity(root)
    if mine is None:
        return []
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _identity(e / "root") == mine]


def remove(jail: JailPaths) -> None:
    """Remove the VM's jail, if any (idempotent): first every process still in it (SIGKILL, waited for: a
    jail removed under a running VMM would leave a process nothing can find again), then its ``/dev``
    tmpfs, then the tree (``rm --one-file-system`` never follows a symlink and copes with any depth)."""
    if not os.path.lexists(jail.dir):
        return
    if os.geteuid() == 0:  # root never walks a tree below a directory someone else could change
        base_fd = open_dir_nofollow(jail.base)
        try:
            _root_only(base_fd, jail.base)
        finally:
            os.close(base_fd)
    if jail.dir.is_symlink():
        jail.dir.unlink()
        return
    deadline = time.monotonic() + 10
    while pids := pids_in(jail.root):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostError(f"processes {pids} in the jail {jail.root} survive SIGKILL",
                            hint="they may be stuck in the kernel (D state); check `ps -o stat,wchan -p PID`")
        time.sleep(0.05)
    _unmount_dev(jail)
    host_run.run_sync(["rm", "-rf", "--one-file-system", "--", str(jail.dir)], timeout=120)


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
        return await asyncio.to_thread(_read_pid_file, jail)
    except (OSError, ValueError) as exc:
        raise HostError(f"the jailer for {jail.vm_id} left no readable {jail.pid_file}: {exc}") from exc


def _read_pid_file(jail: JailPaths) -> int:
    """The jailer's pid file, which root wrote into a directory the VMM's user owns by then: opened without
    following a symlink or blocking on a FIFO, and believed only if it is a small regular file of root's."""
    root_fd = open_dir_nofollow(jail.root)
    try:
        fd = os.open(PID_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_size > 32:
            raise ValueError("not a small regular file of root's")
        return int(os.read(fd, 32).decode().strip())
    finally:
        os.close(fd)


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
    signal_if(pid, lambda: process_in(pid, root), sig)


async def wait_jailed_gone(pid: int, root: Path, within: float) -> bool:
    """Poll until the jailed process is gone; False if it is still there after ``within`` seconds."""
    return await wait_gone(lambda: process_in(pid, root), within)


async def kill_jailed(pid: int, root: Path, what: str) -> None:
    """SIGKILL the jailed process and wait for it to disappear; HostError if it will not."""
    await kill_until_gone(pid, lambda: process_in(pid, root), what)


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
