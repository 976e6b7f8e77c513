"""The one seam every root-only host operation goes through.

The daemon should run as the user who owns the VMs; only a handful of operations need root (bridge, TAP,
NAT rules, resolver routing, loop and device-mapper devices, the id map of a user namespace the owner's
image work runs in, Firecracker's jailer). Keeping them behind the small, explicit
:class:`Privileged` protocol means they can later move into a separate root helper that checks the
caller's uid and validates every argument, without touching the services that call them.
:class:`LocalPrivileged` is the in-process implementation, used while bangerd runs as root.
Arguments are plain strings, ints and paths so that every method can cross a process boundary.
:class:`RemotePrivileged` is that crossing: each call is one request on ``bangerd-root``'s socket
(:mod:`banger.rootd`), a loop device's backing file travelling as an open descriptor (SCM_RIGHTS), never as
a path the helper would have to trust.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any, Protocol

from banger.errors import BangerError, DaemonUnavailable, HostError, PermissionDenied, ProtocolError, from_rpc_error
from banger.host import dm, jail, loopdev, nat, net, resolved, tapfilter, userns
from banger.host.run import run
from banger.host.vmm import open_append

# The helper's wire: one JSON request {"op", "args"} (descriptors alongside), the writer's EOF, one JSON
# reply {"result"} or {"error"} (banger's JSON-RPC error object), then the helper closes.
MAX_MESSAGE = 64 * 1024
JAILED_API_SOCKET = "firecracker.sock"  # the API socket's name at the jail's root
REQUEST_TIMEOUT = 120.0  # dmsetup and nft answer in milliseconds; this only bounds a wedged helper


class Privileged(Protocol):
    """Root-only operations, each idempotent."""

    async def ensure_bridge(self, name: str, ip: str, prefixlen: int) -> None: ...
    async def remove_bridge(self, name: str) -> None: ...
    async def create_tap(self, name: str, bridge: str, owner_uid: int | None) -> None: ...
    async def delete_tap(self, name: str) -> None: ...
    async def ensure_nat(self) -> None: ...
    async def add_vm_nat(self, vm_id: str, guest_ip: str, out_iface: str | None) -> None: ...
    async def remove_vm_nat(self, vm_id: str) -> None: ...
    async def nat_vm_ids(self) -> list[str]: ...
    async def add_tap_filter(self, vm_id: str, tap: str, mac: str, guest_ip: str) -> None: ...
    async def remove_tap_filter(self, vm_id: str) -> None: ...
    async def tap_filter_vm_ids(self) -> list[str]: ...
    async def attach_loop(self, path: Path, read_only: bool) -> str: ...
    async def detach_loop(self, device: str) -> None: ...
    async def dm_create_snapshot(self, name: str, origin: str, cow: str, sectors: int) -> Path: ...
    async def dm_remove(self, name: str) -> None: ...
    async def dm_names(self) -> list[str]: ...
    async def loops_under(self, directory: Path) -> list[str]: ...
    async def set_resolved_link_dns(self, link: str, server: str, domain: str) -> None: ...
    async def revert_resolved_link(self, link: str) -> None: ...
    async def map_userns(self, pid: int) -> None: ...
    async def jail_firecracker(self, vm_id: str, jailer: str, exec_file: str, uid: int, gid: int,
                               chroot_base: Path, netns: str | None, files: list[tuple[str, Path]],
                               devices: list[str], console: Path) -> int: ...
    async def remove_jail(self, vm_id: str, chroot_base: Path) -> None: ...


class LocalPrivileged:
    """Runs the privileged operations in this process (which must be root)."""

    async def ensure_bridge(self, name: str, ip: str, prefixlen: int) -> None:
        await net.ensure_bridge(name, ip, prefixlen)

    async def remove_bridge(self, name: str) -> None:
        await net.remove_bridge(name)

    async def create_tap(self, name: str, bridge: str, owner_uid: int | None) -> None:
        await net.create_tap(name, bridge, owner_uid)

    async def delete_tap(self, name: str) -> None:
        await net.delete_tap(name)

    async def ensure_nat(self) -> None:
        """Enable IPv4 forwarding and create the banger nftables table."""
        nat.enable_ip_forward()
        await nat.ensure_table()

    async def add_vm_nat(self, vm_id: str, guest_ip: str, out_iface: str | None) -> None:
        """NAT for ``guest_ip``, only for packets its own TAP marked (see host.tapfilter)."""
        await self.ensure_nat()
        await nat.add_vm_nat(vm_id, guest_ip, out_iface, tapfilter.mark_for(guest_ip))

    async def remove_vm_nat(self, vm_id: str) -> None:
        await nat.remove_vm_nat(vm_id)

    async def nat_vm_ids(self) -> list[str]:
        """VM ids that have NAT rules (the start-up sweep removes those of VMs not running)."""
        return sorted(await nat.list_vm_nat())

    async def add_tap_filter(self, vm_id: str, tap: str, mac: str, guest_ip: str) -> None:
        """Let ``tap`` pass only frames from ``mac`` and ``guest_ip``."""
        await tapfilter.add_filter(vm_id, tap, mac, guest_ip)

    async def remove_tap_filter(self, vm_id: str) -> None:
        await tapfilter.remove_filter(vm_id)

    async def tap_filter_vm_ids(self) -> list[str]:
        return sorted(await tapfilter.list_filters())

    async def attach_loop(self, path: Path, read_only: bool) -> str:
        fd = open_backing(path, read_only)
        try:
            return await self.attach_loop_fd(fd, read_only)
        finally:
            os.close(fd)

    async def attach_loop_fd(self, fd: int, read_only: bool) -> str:
        """Attach the open file ``fd`` (what the helper does with a descriptor it was passed)."""
        return await loopdev.attach_fd(fd, read_only=read_only)

    async def detach_loop(self, device: str) -> None:
        await loopdev.detach(device)

    async def dm_create_snapshot(self, name: str, origin: str, cow: str, sectors: int) -> Path:
        return await dm.create_snapshot(name, origin, cow, sectors)

    async def dm_remove(self, name: str) -> None:
        await dm.remove(name)

    async def dm_names(self) -> list[str]:
        """banger's device-mapper devices (``banger-*``)."""
        return await dm.list_names()

    async def loops_under(self, directory: Path) -> list[str]:
        """Loop devices whose backing file lies under ``directory``."""
        return [d.device for d in await loopdev.list_under(directory)]

    async def set_resolved_link_dns(self, link: str, server: str, domain: str) -> None:
        """Route ``*.<domain>`` lookups to ``server`` (``ADDR[:PORT]``) for ``link`` through systemd-resolved."""
        await resolved.route_vm_domain(link, server, domain=domain)

    async def revert_resolved_link(self, link: str) -> None:
        """Drop the per-link DNS settings of ``link``."""
        await resolved.unroute(link)

    async def jail_firecracker(self, vm_id: str, jailer: str, exec_file: str, uid: int, gid: int,
                               chroot_base: Path, netns: str | None, files: list[tuple[str, Path]],
                               devices: list[str], console: Path) -> int:
        """Make VM ``vm_id``'s jail under ``chroot_base`` and run the jailer in it; Firecracker's pid.

        ``files`` are (name in the jail, host file) pairs hard-linked in; each block device in ``devices``
        gets a node in the jail's ``/dev``, owned by ``uid``; Firecracker's output is appended to ``console``.
        """
        console_fd = open_append(console)
        opened: list[tuple[str, Path, int]] = []
        try:
            for name, path in files:
                opened.append((name, Path(os.path.realpath(path)), open_backing(path, True)))
            return await self.jail_firecracker_fd(vm_id, jailer, exec_file, uid, gid, chroot_base, netns,
                                                  opened, devices, console_fd)
        finally:
            for fd in (console_fd, *(fd for _name, _path, fd in opened)):
                os.close(fd)

    async def jail_firecracker_fd(self, vm_id: str, jailer: str, exec_file: str, uid: int, gid: int,
                                  chroot_base: Path, netns: str | None, files: list[tuple[str, Path, int]],
                                  devices: list[str], console_fd: int) -> int:
        """:meth:`jail_firecracker` with open descriptors (what the helper is passed)."""
        where = jail.JailPaths(chroot_base, vm_id)
        await asyncio.to_thread(jail.prepare, where, files, [Path(d) for d in devices], uid, gid)
        try:
            argv = jail.jailer_argv(jailer, exec_file, where, uid, gid, netns, "/" + JAILED_API_SOCKET)
            pid = await jail.run_jailer(argv, where, console_fd)
            if not jail.process_in(pid, where.root):
                raise BangerError(f"Firecracker (pid {pid}) exited right after the jailer started it")
        except BaseException:
            await asyncio.to_thread(jail.remove, where)
            raise
        return pid

    async def remove_jail(self, vm_id: str, chroot_base: Path) -> None:
        """Remove VM ``vm_id``'s jail (its Firecracker gone first: the caller kills it)."""
        await asyncio.to_thread(jail.remove, jail.JailPaths(chroot_base, jail.check_jail_id(vm_id)))

    async def map_userns(self, pid: int) -> None:
        """Map the fresh user namespace of ``pid`` onto its user's subordinate ids (banger.host.userns).

        As root this writes the map itself (bangerd-root, after its policy check); a daemon run by hand as
        a normal user, outside any unit, uses the setuid newuidmap/newgidmap instead."""
        if os.geteuid() == 0:
            proc_fd = userns.open_process(pid)
            try:
                await self.map_userns_fd(proc_fd, userns.process_uid(proc_fd))
            finally:
                os.close(proc_fd)
            return
        for argv in userns.newidmap_argv(pid, userns.id_map_for(os.getuid())):
            await run(argv)

    async def map_userns_fd(self, proc_fd: int, owner_uid: int) -> None:
        """Write ``owner_uid``'s map into the namespace of the process ``/proc`` descriptor ``proc_fd``."""
        await asyncio.to_thread(userns.write_map, proc_fd, userns.id_map_for(owner_uid))


def open_backing(path: Path, read_only: bool) -> int:
    """An open descriptor of ``path`` for bangerd-root (a loop's backing file, a file for a jail). A symlink is
    followed (test homes link images from a cache); the helper then judges the file the descriptor really
    is, wherever the link pointed."""
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as exc:
        raise HostError(f"cannot open {path}: {exc.strerror}") from exc


class RemotePrivileged:
    """The privileged operations, asked of ``bangerd-root`` over its socket (one connection per call).

    Nothing is cached between calls, so a restarted helper is simply used again by the next call.
    """

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path

    async def call(self, op: str, fds: tuple[int, ...] = (), **args: Any) -> Any:
        return await asyncio.to_thread(self._call_sync, op, args, fds)

    def _call_sync(self, op: str, args: dict[str, Any], fds: tuple[int, ...]) -> Any:
        request = json.dumps({"op": op, "args": args}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                raise DaemonUnavailable(
                    f"bangerd-root is not answering on {self.socket_path} ({exc.strerror}); "
                    f"nothing that needs root ({op.replace('_', ' ')}) can be done",
                    hint="start it (`systemctl start bangerd-root`, or see `banger system status`), then retry",
                ) from exc
            _check_helper(sock, self.socket_path)
            socket.send_fds(sock, [request], list(fds)) if fds else sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            reply = _read_all(sock)
        except TimeoutError as exc:
            raise DaemonUnavailable(f"bangerd-root did not answer {op} within {REQUEST_TIMEOUT:g}s") from exc
        except (ConnectionError, BrokenPipeError) as exc:
            raise DaemonUnavailable(f"bangerd-root hung up during {op}: {exc}",
                                    hint="see `banger system status`; the helper may have been restarted") from exc
        finally:
            sock.close()
        if not reply:  # the helper died (or was restarted) with our request in hand
            raise DaemonUnavailable(f"bangerd-root hung up during {op} without answering",
                                    hint="see `banger system status`; the helper may have been restarted")
        try:
            doc = json.loads(reply)
        except ValueError as exc:
            raise ProtocolError(f"bangerd-root sent a reply that is not JSON for {op}") from exc
        if "error" in doc:
            raise from_rpc_error(doc["error"])
        return doc.get("result")

    async def ensure_bridge(self, name: str, ip: str, prefixlen: int) -> None:
        await self.call("ensure_bridge", name=name, ip=ip, prefixlen=prefixlen)

    async def remove_bridge(self, name: str) -> None:
        await self.call("remove_bridge", name=name)

    async def create_tap(self, name: str, bridge: str, owner_uid: int | None) -> None:
        await self.call("create_tap", name=name, bridge=bridge, owner_uid=owner_uid)

    async def delete_tap(self, name: str) -> None:
        await self.call("delete_tap", name=name)

    async def ensure_nat(self) -> None:
        await self.call("ensure_nat")

    async def add_vm_nat(self, vm_id: str, guest_ip: str, out_iface: str | None) -> None:
        await self.call("add_vm_nat", vm_id=vm_id, guest_ip=guest_ip, out_iface=out_iface)

    async def remove_vm_nat(self, vm_id: str) -> None:
        await self.call("remove_vm_nat", vm_id=vm_id)

    async def nat_vm_ids(self) -> list[str]:
        return [str(v) for v in await self.call("nat_vm_ids")]

    async def add_tap_filter(self, vm_id: str, tap: str, mac: str, guest_ip: str) -> None:
        await self.call("add_tap_filter", vm_id=vm_id, tap=tap, mac=mac, guest_ip=guest_ip)

    async def remove_tap_filter(self, vm_id: str) -> None:
        await self.call("remove_tap_filter", vm_id=vm_id)

    async def tap_filter_vm_ids(self) -> list[str]:
        return [str(v) for v in await self.call("tap_filter_vm_ids")]

    async def attach_loop(self, path: Path, read_only: bool) -> str:
        fd = open_backing(path, read_only)
        try:
            return str(await self.call("attach_loop", (fd,), read_only=read_only, path=str(path.absolute())))
        finally:
            os.close(fd)

    async def detach_loop(self, device: str) -> None:
        await self.call("detach_loop", device=device)

    async def dm_create_snapshot(self, name: str, origin: str, cow: str, sectors: int) -> Path:
        return Path(await self.call("dm_create_snapshot", name=name, origin=origin, cow=cow, sectors=sectors))

    async def dm_remove(self, name: str) -> None:
        await self.call("dm_remove", name=name)

    async def dm_names(self) -> list[str]:
        return [str(v) for v in await self.call("dm_names")]

    async def loops_under(self, directory: Path) -> list[str]:
        return [str(v) for v in await self.call("loops_under", directory=str(directory))]

    async def set_resolved_link_dns(self, link: str, server: str, domain: str) -> None:
        await self.call("set_resolved_link_dns", link=link, server=server, domain=domain)

    async def revert_resolved_link(self, link: str) -> None:
        await self.call("revert_resolved_link", link=link)

    async def jail_firecracker(self, vm_id: str, jailer: str, exec_file: str, uid: int, gid: int,
                               chroot_base: Path, netns: str | None, files: list[tuple[str, Path]],
                               devices: list[str], console: Path) -> int:
        # The console first, then one descriptor per file, each with the path it claims to be (checked).
        fds = [open_append(console)]
        try:
            fds += [open_backing(path, True) for _name, path in files]
            return int(await self.call("jail_firecracker", tuple(fds), vm_id=vm_id, jailer=jailer,
                                       exec_file=exec_file, uid=uid, gid=gid, chroot_base=str(chroot_base),
                                       netns=netns, files=[[n, str(p.absolute())] for n, p in files],
                                       devices=list(devices)))
        finally:
            for fd in fds:
                os.close(fd)

    async def remove_jail(self, vm_id: str, chroot_base: Path) -> None:
        await self.call("remove_jail", vm_id=vm_id, chroot_base=str(chroot_base))

    async def map_userns(self, pid: int) -> None:
        await self.call("map_userns", pid=pid)


def _check_helper(sock: socket.socket, path: Path) -> None:
    """Only root may answer as bangerd-root: anyone else listening there would be handed our descriptors."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    if uid != 0:
        raise PermissionDenied(f"the process serving {path} (pid {pid}) runs as uid {uid}, not root: "
                               "it is not bangerd-root; nothing was sent to it",
                               hint=f"find out who started pid {pid}; stop it, then restart bangerd-root")


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := sock.recv(MAX_MESSAGE):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise ProtocolError(f"a bangerd-root message is larger than {MAX_MESSAGE} bytes")
    return b"".join(chunks)


def read_message(sock: socket.socket, max_fds: int = 16) -> tuple[bytes, list[int]]:
    """One whole message (until the writer's EOF) and the descriptors that came with it (helper side)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, max_fds)
    if data:
        try:
            rest = _read_all(sock)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        data += rest
    if len(data) > MAX_MESSAGE:
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"a bangerd-root message is larger than {MAX_MESSAGE} bytes")
    return data, fds


def local() -> Privileged:
    """The in-process implementation, typed as the protocol (so mypy checks that it conforms)."""
    return LocalPrivileged()
