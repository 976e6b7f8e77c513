"""bangerd-root's socket: who may ask (uid 0 and the owner), one request per connection, one at a time."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from banger.errors import BangerError, HostError, PermissionDenied, ProtocolError, to_rpc_error
from banger.host import dm
from banger.host.privileged import LocalPrivileged, read_message
from banger.rootd.policy import Policy, check_args, refuse

log = logging.getLogger("banger.rootd")

READ_TIMEOUT = 10.0  # a request is a few hundred bytes: a peer that does not finish sending is cut off
MAX_CONNECTIONS = 32

Handler = Callable[[dict[str, Any], list[int]], Awaitable[Any]]


class RootHelper:
    """The operations bangerd-root performs, each after its policy check."""

    def __init__(self, policy: Policy, local: LocalPrivileged | None = None):
        self.policy = policy
        self.local = local or LocalPrivileged()
        p = policy
        # op -> (allowed argument names, handler); nothing outside this table is ever run.
        self.table: dict[str, tuple[set[str], Handler]] = {
            "ensure_bridge": ({"name", "ip", "prefixlen"}, self._ensure_bridge),
            "remove_bridge": ({"name"}, lambda a, _: self.local.remove_bridge(p.check_bridge(a.get("name")))),
            "create_tap": ({"name", "bridge", "owner_uid"}, self._create_tap),
            "delete_tap": ({"name"}, lambda a, _: self.local.delete_tap(p.check_tap(a.get("name")))),
            "ensure_nat": (set(), lambda a, _: self.local.ensure_nat()),
            "add_vm_nat": ({"vm_id", "guest_ip", "out_iface"}, lambda a, _: self.local.add_vm_nat(
                p.check_vm_id(a.get("vm_id")), p.check_guest_ip(a.get("guest_ip")),
                p.check_out_iface(a.get("out_iface")))),
            "remove_vm_nat": ({"vm_id"}, lambda a, _: self.local.remove_vm_nat(p.check_vm_id(a.get("vm_id")))),
            "nat_vm_ids": (set(), lambda a, _: self.local.nat_vm_ids()),
            "add_tap_filter": ({"vm_id", "tap", "mac", "guest_ip"}, lambda a, _: self.local.add_tap_filter(
                p.check_vm_id(a.get("vm_id")), p.check_tap(a.get("tap")), p.check_mac(a.get("mac")),
                p.check_guest_ip(a.get("guest_ip")))),
            "remove_tap_filter": ({"vm_id"}, lambda a, _: self.local.remove_tap_filter(
                p.check_vm_id(a.get("vm_id")))),
            "tap_filter_vm_ids": (set(), lambda a, _: self.local.tap_filter_vm_ids()),
            "attach_loop": ({"read_only", "path"}, self._attach_loop),
            "detach_loop": ({"device"}, self._detach_loop),
            "dm_create_snapshot": ({"name", "origin", "cow", "sectors"}, self._dm_create),
            "dm_remove": ({"name"}, lambda a, _: self.local.dm_remove(p.check_dm_name(a.get("name")))),
            "dm_names": (set(), lambda a, _: self.local.dm_names()),
            "loops_under": ({"directory"}, lambda a, _: self.local.loops_under(
                p.check_state_dir(a.get("directory")))),
            "set_resolved_link_dns": ({"link", "server", "domain"}, self._route_dns),
            "revert_resolved_link": ({"link"}, lambda a, _: self.local.revert_resolved_link(
                p.check_bridge(a.get("link")))),
            "map_userns": ({"pid"}, self._map_userns),
            "jail_firecracker": ({"vm_id", "jailer", "exec_file", "uid", "gid", "chroot_base", "netns", "files",
                                  "devices"}, self._jail_firecracker),
            "remove_jail": ({"vm_id", "chroot_base"}, lambda a, _: self.local.remove_jail(
                p.check_vm_id(a.get("vm_id")), p.check_jail_base(a.get("chroot_base")))),
        }

    async def handle(self, op: Any, args: Any, fds: list[int]) -> Any:
        entry = self.table.get(op) if isinstance(op, str) else None
        if entry is None:
            raise refuse(f"operation {op!r}", "not one of bangerd-root's operations")
        allowed, handler = entry
        result = await handler(check_args(op, args, allowed), fds)
        return str(result) if isinstance(result, Path) else result

    async def _ensure_bridge(self, a: dict[str, Any], _fds: list[int]) -> None:
        name = self.policy.check_bridge(a.get("name"))
        if a.get("ip") != self.policy.bridge_ip or a.get("prefixlen") != self.policy.cidr.prefixlen:
            raise refuse(f"bridge address {a.get('ip')}/{a.get('prefixlen')}",
                         f"the bridge is {self.policy.bridge_ip}/{self.policy.cidr.prefixlen} (bridge_ip, cidr)")
        await self.local.ensure_bridge(name, self.policy.bridge_ip, self.policy.cidr.prefixlen)

    async def _create_tap(self, a: dict[str, Any], _fds: list[int]) -> None:
        name, bridge = self.policy.check_tap(a.get("name")), self.policy.check_bridge(a.get("bridge"))
        if a.get("owner_uid") not in (None, self.policy.owner_uid):
            raise refuse(f"a TAP for uid {a.get('owner_uid')!r}", "TAPs belong to the owner")
        await self.local.create_tap(name, bridge, self.policy.owner_uid)

    async def _attach_loop(self, a: dict[str, Any], fds: list[int]) -> str:
        if len(fds) != 1:
            raise refuse("a loop device by path" if fds == [] else f"{len(fds)} descriptors",
                         "send the backing file as exactly one open descriptor (SCM_RIGHTS), never a path alone")
        self.policy.check_backing_fd(fds[0], a.get("read_only"), a.get("path"))
        return await self.local.attach_loop_fd(fds[0], bool(a.get("read_only")))

    async def _detach_loop(self, a: dict[str, Any], _fds: list[int]) -> None:
        device = a.get("device")
        try:
            await self.policy.check_loop(device)
        except PermissionDenied:
            if isinstance(device, str) and await _detached(device):
                return  # idempotent: already gone
            raise
        await self.local.detach_loop(str(device))

    async def _dm_create(self, a: dict[str, Any], _fds: list[int]) -> Path:
        name = self.policy.check_dm_name(a.get("name"))
        origin, cow = await self.policy.check_loop(a.get("origin")), await self.policy.check_loop(a.get("cow"))
        path = await self.local.dm_create_snapshot(name, origin, cow, self.policy.check_sectors(a.get("sectors")))
        # The owner's VMM opens the device: it gets the node, nothing else of device-mapper.
        os.chown(os.path.realpath(dm.device_path(name)), self.policy.owner_uid, -1)
        return path

    async def _jail_firecracker(self, a: dict[str, Any], fds: list[int]) -> int:
        console = self.policy.check_console_fd(fds)
        files = self.policy.check_jail_files(a.get("files"), fds[1:])
        vm_id, jailer, exec_file, base, netns = self.policy.check_jail(a)
        devices = await self.policy.check_jail_devices(a.get("devices"))
        assert self.policy.owner_gid is not None  # check_jail refuses without it
        return await self.local.jail_firecracker_fd(vm_id, jailer, exec_file, self.policy.owner_uid,
                                                    self.policy.owner_gid, base, netns, files, devices, console)

    async def _map_userns(self, a: dict[str, Any], _fds: list[int]) -> None:
        proc_fd = self.policy.open_userns_target(a.get("pid"))
        try:
            await self.local.map_userns_fd(proc_fd, self.policy.owner_uid)
        finally:
            os.close(proc_fd)

    async def _route_dns(self, a: dict[str, Any], _fds: list[int]) -> None:
        self.policy.check_resolver(a.get("link"), a.get("server"), a.get("domain"))
        await self.local.set_resolved_link_dns(self.policy.bridge, self.policy.dns_listen, "vm")


async def _detached(device: str) -> bool:
    from banger.host import loopdev

    return await loopdev.backing_file(device) is None


class Server:
    """Accepts on ``path``; each connection is one request, answered then closed."""

    def __init__(self, path: Path, helper: RootHelper, owner_uid: int):
        self.path = path
        self.helper = helper
        self.owner_uid = owner_uid
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()  # one operation at a time: nft and dmsetup changes never interleave
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    def start(self) -> None:
        """Listen: the directory is 0711 (root's), the socket 0600 and the owner's, so only root and the owner
        can connect; SO_PEERCRED is checked again on every connection."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        os.chown(self.path.parent, 0, 0)
        os.chmod(self.path.parent, 0o711)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chown(self.path, self.owner_uid, -1)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock

    async def serve(self, stopping: asyncio.Event) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(loop.sock_accept(self._sock))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while True:
                done, _ = await asyncio.wait({accept, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return
                conn, _addr = accept.result()
                await self._slots.acquire()
                task = asyncio.create_task(self._serve_one(conn))
                self._tasks.add(task)
                task.add_done_callback(self._done)
                accept = asyncio.ensure_future(loop.sock_accept(self._sock))
        finally:
            accept.cancel()
            stop.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._sock.close()
            self.path.unlink(missing_ok=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve_one(self, conn: socket.socket) -> None:
        fds: list[int] = []
        request: dict[str, Any] | None = None
        try:
            pid, uid = _peer(conn)
            if uid not in (0, self.owner_uid):
                log.warning("refused a connection", extra={"pid": pid, "uid": uid})
                raise PermissionDenied(f"bangerd-root serves root and uid {self.owner_uid} only, not uid {uid}")
            conn.settimeout(READ_TIMEOUT)
            data, fds = await asyncio.to_thread(read_message, conn)
            if not data and not fds:  # a liveness probe (connect, close): nothing to answer
                conn.close()
                return
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                raise ProtocolError("bangerd-root requests are one JSON object") from exc
            if not isinstance(parsed, dict):
                raise ProtocolError("bangerd-root requests are one JSON object")
            request = parsed
            async with self._lock:
                result = await self.helper.handle(request.get("op"), request.get("args", {}), fds)
            log.info("done", extra={"op": request.get("op"), "uid": uid})
            reply: dict[str, Any] = {"result": result}
        except (BangerError, OSError, BaseExceptionGroup) as exc:
            if isinstance(exc, OSError):  # the request could not be read, or the operation hit the host
                what = f"{request.get('op')!r} failed" if request is not None else "could not read the request"
                exc = (HostError if request is not None else ProtocolError)(f"bangerd-root {what}: {exc}")
            log.info("refused or failed", extra={"error": str(exc).splitlines()[0]})
            reply = {"error": to_rpc_error(exc)}
        except Exception as exc:  # a bug: the caller gets an internal error, the helper keeps serving
            log.exception("operation failed")
            reply = {"error": to_rpc_error(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            await asyncio.to_thread(conn.sendall, json.dumps(reply).encode())
        except OSError:
            pass
        finally:
            conn.close()


def _peer(conn: socket.socket) -> tuple[int, int]:
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid
