"""What bangerd-root agrees to do: each operation's arguments checked against banger's configuration.

A refusal is :class:`~banger.errors.PermissionDenied` naming the argument and what is allowed. The owner
daemon never sends a refused request on purpose, so a refusal means a bug or a compromised owner daemon.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger import ipam
from banger.config import Config
from banger.errors import HostError, PermissionDenied
from banger.host import dm, jail, loopdev, userns
from banger.host.run import which

VM_ID_RE = re.compile(r"^[0-9a-f]{12}$")
TAP_RE = re.compile(rf"^{re.escape(ipam.TAP_PREFIX)}[0-9a-f]{{10}}$")
DM_RE = re.compile(rf"^{re.escape(dm.PREFIX)}[0-9a-f]{{12}}$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
VM_DOMAIN = "vm"
NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_JAIL_DEVICES = 8
MAX_JAIL_FILES = 12  # vmlinux, initrd, vmm.log, metrics.json and up to eight disks


def refuse(what: str, why: str) -> PermissionDenied:
    return PermissionDenied(f"bangerd-root refuses {what}: {why}")


@dataclass(frozen=True)
class Policy:
    owner_uid: int
    state_dir: Path
    bridge: str
    bridge_ip: str
    cidr: ipaddress.IPv4Network
    dns_listen: str
    owner_gid: int | None = None
    firecracker_bin: str = "firecracker"
    jailer_bin: str = "jailer"

    @classmethod
    def from_config(cls, cfg: Config, owner_uid: int, state_dir: Path, owner_gid: int | None = None) -> Policy:
        return cls(owner_uid, Path(os.path.realpath(state_dir)), cfg.bridge_name, cfg.bridge_ip,
                   ipaddress.IPv4Network(cfg.cidr), cfg.dns_listen, owner_gid, cfg.firecracker_bin, cfg.jailer_bin)

    # --- single values ------------------------------------------------------------------------------

    def check_bridge(self, name: Any) -> str:
        if name != self.bridge:
            raise refuse(f"bridge {name!r}", f"the only bridge is {self.bridge!r} (bridge_name in the config)")
        return str(name)

    def check_tap(self, name: Any) -> str:
        if not isinstance(name, str) or not TAP_RE.match(name):
            raise refuse(f"TAP {name!r}", f"banger's TAPs are named {ipam.TAP_PREFIX} + 10 hex digits")
        return name

    def check_guest_ip(self, ip: Any) -> str:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise refuse(f"address {ip!r}", "not an IPv4 address") from exc
        if addr not in self.cidr or addr in (self.cidr.network_address, self.cidr.broadcast_address) \
                or str(addr) == self.bridge_ip:
            raise refuse(f"address {ip!r}", f"guest addresses lie inside {self.cidr} (cidr in the config)")
        return str(addr)

    def check_vm_id(self, vm_id: Any) -> str:
        if not isinstance(vm_id, str) or not VM_ID_RE.match(vm_id):
            raise refuse(f"VM id {vm_id!r}", "a VM id is 12 hex digits")
        return vm_id

    def check_mac(self, mac: Any) -> str:
        if not isinstance(mac, str) or not MAC_RE.match(mac):
            raise refuse(f"MAC {mac!r}", "expected six lowercase hex pairs")
        return mac

    def check_out_iface(self, iface: Any) -> str | None:
        if iface is not None and (not isinstance(iface, str) or not IFNAME_RE.match(iface)
                                  or iface == self.bridge or iface.startswith(ipam.TAP_PREFIX)):
            raise refuse(f"uplink {iface!r}", "name a host interface other than banger's own, or none")
        return iface

    def check_dm_name(self, name: Any) -> str:
        if not isinstance(name, str) or not DM_RE.match(name):
            raise refuse(f"device-mapper name {name!r}", f"banger's are {dm.PREFIX} + 12 hex digits")
        return name

    def check_state_dir(self, directory: Any) -> Path:
        if not isinstance(directory, str) or Path(os.path.realpath(directory)) != self.state_dir:
            raise refuse(f"directory {directory!r}", f"only banger's state dir {self.state_dir}")
        return self.state_dir

    def check_resolver(self, link: Any, server: Any, domain: Any) -> None:
        self.check_bridge(link)
        host, _, _port = str(server).rpartition(":")
        if server != self.dns_listen or not host or not ipaddress.IPv4Address(host).is_loopback:
            raise refuse(f"DNS server {server!r}", f"only banger's own loopback server {self.dns_listen!r}")
        if domain != VM_DOMAIN:
            raise refuse(f"domain {domain!r}", f"only {VM_DOMAIN!r}")

    def check_sectors(self, sectors: Any) -> int:
        if not isinstance(sectors, int) or isinstance(sectors, bool) or not 0 < sectors < 1 << 40:
            raise refuse(f"size {sectors!r}", "a positive number of 512-byte sectors")
        return sectors

    # --- files and devices --------------------------------------------------------------------------

    def check_backing_fd(self, fd: int, read_only: Any, path: Any) -> None:
        """The descriptor is an owner's regular file under the state dir, opened for what is asked.

        ``path`` is the caller's claim of where the file is; it counts only because it names the very inode
        the descriptor holds (what is attached is the descriptor itself, so the name cannot be swapped).
        """
        if not isinstance(read_only, bool):
            raise refuse(f"read_only={read_only!r}", "true or false")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise refuse(f"a loop device over {path!r}", "name the descriptor's file by its absolute path")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"a loop device over {path}", "only regular files")
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self.state_dir):
            raise refuse(f"a loop device over {path}", f"only files under the state dir {self.state_dir}")
        try:
            named = os.stat(real, follow_symlinks=False)
        except OSError as exc:
            raise refuse(f"a loop device over {path}", "no such file") from exc
        if (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino):
            raise refuse(f"a loop device over {path}", "the descriptor is not that file")
        if st.st_uid != self.owner_uid:
            raise refuse(f"a loop device over {path}", f"the file belongs to uid {st.st_uid}, not the owner")
        writable = _access_mode(fd) != os.O_RDONLY
        if not read_only and not writable:
            raise refuse(f"a writable loop device over {path}", "the descriptor was opened read-only")

    async def check_loop(self, device: Any) -> str:
        """A loop device whose file lies under the state dir (one the helper attached), by inode."""
        if not isinstance(device, str) or not loopdev.LOOP_RE.match(device):
            raise refuse(f"loop device {device!r}", "expected /dev/loopN")
        ident = await loopdev.backing_identity(device)
        if ident is None or ident not in self.state_files():
            raise refuse(f"loop device {device}", f"only loops over files under {self.state_dir}")
        return device

    def open_userns_target(self, pid: Any) -> int:
        """A ``/proc`` descriptor of an owner's process (all four uids the owner's) in a user namespace other
        than the host's whose id maps are both still empty; the caller closes it.

        The map the helper then writes is never the caller's: it is the owner's own subordinate block
        (banger.host.userns), so at worst an owner's process gets ids the owner was already given. Every
        check and the write go through the one descriptor, so a pid reused meanwhile fails instead."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise refuse(f"pid {pid!r}", "a process id")
        try:
            proc_fd = userns.open_process(pid)
        except OSError as exc:
            raise refuse(f"mapping pid {pid}", f"no such process: {exc.strerror}") from exc
        try:
            uid = userns.process_uid(proc_fd)
            ns, ours = userns.user_ns(proc_fd), os.readlink("/proc/self/ns/user")
            written = userns.maps_written(proc_fd)
            if uid != self.owner_uid:
                raise refuse(f"mapping pid {pid}", f"it runs as uid {uid}, not the owner {self.owner_uid}")
            if ns == ours:
                raise refuse(f"mapping pid {pid}", "it is in the host's user namespace, not a new one")
            if written:
                raise refuse(f"mapping pid {pid}", "its user namespace is already mapped")
        except (OSError, StopIteration, HostError) as exc:
            os.close(proc_fd)
            raise refuse(f"mapping pid {pid}", f"cannot read the process: {exc}") from exc
        except BaseException:
            os.close(proc_fd)
            raise
        return proc_fd

    # --- the jailer ----------------------------------------------------------------------------------

    def check_jail(self, a: dict[str, Any]) -> tuple[str, str, str, Path, str | None]:
        """(vm_id, jailer, exec_file, chroot base, netns) of a ``jail_firecracker`` request, each checked
        against the config: the configured binaries, the owner's ids, ``<state>-jail``, an existing netns."""
        vm_id = self.check_vm_id(a.get("vm_id"))
        jailer, exec_file = _configured(self.jailer_bin, "jailer"), _configured(self.firecracker_bin, "firecracker")
        if a.get("jailer") != jailer:
            raise refuse(f"jailer {a.get('jailer')!r}", f"only the configured {jailer} (jailer_bin)")
        if a.get("exec_file") != exec_file:
            raise refuse(f"exec file {a.get('exec_file')!r}", f"only the configured {exec_file} (firecracker_bin)")
        if a.get("uid") != self.owner_uid or isinstance(a.get("uid"), bool):
            raise refuse(f"a jailed VMM as uid {a.get('uid')!r}", f"it runs as the owner, uid {self.owner_uid}")
        if self.owner_gid is None or a.get("gid") != self.owner_gid or isinstance(a.get("gid"), bool):
            raise refuse(f"a jailed VMM as gid {a.get('gid')!r}", f"it runs as the owner's group {self.owner_gid}")
        base = self.check_jail_base(a.get("chroot_base"))
        netns = a.get("netns")
        if netns is not None and not _is_our_netns(netns):
            raise refuse(f"network namespace {netns!r}", "none, or the one bangerd-root itself runs in")
        return vm_id, jailer, exec_file, base, netns

    def check_jail_files(self, files: Any, fds: list[int]) -> list[tuple[str, Path, int]]:
        """What goes into a jail: each a fixed name and an owner's file under the state dir, passed as an
        open descriptor naming the very inode it claims (the helper links the descriptor, not a path)."""
        if not isinstance(files, list) or len(files) != len(fds) or len(files) > MAX_JAIL_FILES:
            raise refuse(f"jail files {files!r}", f"at most {MAX_JAIL_FILES} [name, path] pairs, one descriptor each")
        out, names = [], set()
        for entry, fd in zip(files, fds, strict=True):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise refuse(f"jail file {entry!r}", "a [name, path] pair")
            name, path = entry
            if not jail.FILE_RE.match(name) or name in names:
                raise refuse(f"jail file name {name!r}", "vmlinux, initrd, vmm.log, metrics.json or vda..vdz, once")
            names.add(name)
            self.check_backing_fd(fd, True, path)
            out.append((name, Path(os.path.realpath(path)), fd))
        return out

    def check_jail_base(self, base: Any) -> Path:
        expected = jail.jail_base(self.state_dir)
        if base != str(expected):
            raise refuse(f"chroot base {base!r}", f"only {expected}")
        return expected

    async def check_jail_devices(self, devices: Any) -> list[str]:
        """Block devices for the jail: banger's dm devices or loops over files under the state dir."""
        if not isinstance(devices, list) or len(devices) > MAX_JAIL_DEVICES:
            raise refuse(f"devices {devices!r}", f"a list of at most {MAX_JAIL_DEVICES} device paths")
        for device in devices:
            if isinstance(device, str) and device.startswith("/dev/mapper/"):
                if device != str(dm.device_path(self.check_dm_name(device.removeprefix("/dev/mapper/")))):
                    raise refuse(f"device {device!r}", "a dm device by its /dev/mapper name")
                # Not by name alone (another install, or root's own banger, uses the same prefix): every
                # device under it must be a loop over a file of this state dir, as dm_create requires.
                slaves = _dm_slaves(device)
                if not slaves:
                    raise refuse(f"device {device!r}", "a dm device over loops the helper attached")
                for loop in slaves:
                    await self.check_loop(loop)
            else:
                await self.check_loop(device)
        return [str(d) for d in devices]

    def check_console_fd(self, fds: list[int]) -> int:
        """The console is the first descriptor: the owner's regular file, open for writing."""
        if not fds:
            raise refuse("no descriptors", "send the console log as an open descriptor, first")
        st = os.fstat(fds[0])
        if not stat.S_ISREG(st.st_mode) or st.st_uid != self.owner_uid or _access_mode(fds[0]) == os.O_RDONLY:
            raise refuse("that console", "only an owner's regular file, open for writing")
        return fds[0]

    def state_files(self) -> set[tuple[int, int, int]]:
        """(major, minor, inode) of the regular files under the state dir (images, VM disks: a few dozen)."""
        return loopdev.file_identities(self.state_dir)


def _is_our_netns(name: Any) -> bool:
    """``name`` is a namespace in /run/netns that is the helper's own (tests run both daemons inside one)."""
    if not isinstance(name, str) or not NETNS_RE.match(name):
        return False
    try:
        theirs, ours = os.stat(Path("/run/netns", name)), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _dm_slaves(device: str) -> list[str]:
    """The block devices a dm device sits on (``/dev/loopN`` ...), from sysfs."""
    try:
        name = Path(os.path.realpath(device)).name  # dm-N
        return [f"/dev/{p.name}" for p in sorted(Path("/sys/block", name, "slaves").iterdir())]
    except OSError:
        return []


def _configured(name: str, what: str) -> str:
    found = which(name)
    if found is None:
        raise refuse(f"running the {what}", f"{name!r} (from root's config) is not installed")
    return os.path.realpath(found)


def _access_mode(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def check_args(op: str, args: Any, allowed: set[str]) -> dict[str, Any]:
    """``args`` is an object whose keys are exactly among ``allowed`` (an unknown key is refused)."""
    if not isinstance(args, dict):
        raise refuse(op, "arguments must be an object")
    extra = sorted(set(args) - allowed)
    if extra:
        raise refuse(f"{op} with {', '.join(map(repr, extra))}",
                     f"{op} takes only {', '.join(sorted(allowed)) or 'no arguments'}")
    return args
