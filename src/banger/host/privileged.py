"""The one seam every root-only host operation goes through.

The daemon should run as the user who owns the VMs; only a handful of operations need root (bridge, TAP,
NAT rules, resolver routing, loop and device-mapper devices). Keeping them behind the small, explicit
:class:`Privileged` protocol means they can later move into a separate root helper that checks the
caller's uid and validates every argument, without touching the services that call them.
:class:`LocalPrivileged` is the in-process implementation, used while bangerd runs as root.
Arguments are plain strings, ints and paths so that every method can cross a process boundary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from banger.host import dm, loopdev, nat, net, resolved, tapfilter


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
        return await loopdev.attach(path, read_only=read_only)

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


def local() -> Privileged:
    """The in-process implementation, typed as the protocol (so mypy checks that it conforms)."""
    return LocalPrivileged()
