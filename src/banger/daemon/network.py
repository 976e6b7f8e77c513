"""NetworkService: the bridge, the warm TAP pool, guest addresses and per-VM NAT.

Every host change goes through the ``Privileged`` seam. TAPs are never reused between VMs: a released TAP
is deleted and the pool refilled in the background, so no state (MAC learning, queued frames) leaks from
one VM to the next.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable

from banger import ipam
from banger.config import Config
from banger.errors import DaemonUnavailable
from banger.host import net, resolved
from banger.host.privileged import Privileged

log = logging.getLogger("banger.daemon.network")


class NetworkService:
    """Owns the bridge, the TAP pool (a leaf lock) and NAT rules."""

    def __init__(self, config: Config, priv: Privileged, *, tag: str):
        self.config = config
        self.priv = priv
        self.tag = tag  # this daemon's TAPs are named bgt-<tag>...; the sweep touches no others
        self.prefixlen = ipaddress.IPv4Network(config.cidr).prefixlen
        self._bridge_ready = False
        self._bridge_lock = asyncio.Lock()
        self._pool: list[str] = []
        self._pool_lock = asyncio.Lock()  # leaf lock
        self._refill: asyncio.Task[None] | None = None
        # Releases that could not reach bangerd-root (it was down): retried once it answers again, so a
        # helper restart leaves no TAP, filter or NAT rule behind. Keyed so a retry is never queued twice.
        self._pending: dict[str, Callable[[], Awaitable[None]]] = {}

    # --- addresses ----------------------------------------------------------------------------------

    def allocate_ip(self, taken: set[str]) -> str:
        """The lowest free guest address (the caller holds the create lock and inserts it at once)."""
        return ipam.allocate(self.config.cidr, self.config.bridge_ip, taken)

    # --- bridge -------------------------------------------------------------------------------------

    async def ensure_bridge(self) -> None:
        async with self._bridge_lock:
            if not self._bridge_ready:
                await self.priv.ensure_bridge(self.config.bridge_name, self.config.bridge_ip, self.prefixlen)
                await self._route_vm_names()
                self._bridge_ready = True

    async def _route_vm_names(self) -> None:
        """Send ``*.vm`` lookups on the bridge to the daemon's DNS server, where systemd-resolved runs."""
        why_not = resolved.available()
        if not self.config.dns_listen or not why_not:
            log.info("not routing .vm through systemd-resolved", extra={"reason": why_not.reason})
            return
        try:
            await self.priv.set_resolved_link_dns(self.config.bridge_name, self.config.dns_listen, "vm")
        except Exception:
            log.warning("could not route .vm through systemd-resolved; names resolve only by asking "
                        f"{self.config.dns_listen} directly", exc_info=True)

    # --- TAPs ---------------------------------------------------------------------------------------

    async def _release(self, key: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run a release; while bangerd-root is unreachable, queue it instead of failing (an undo that
        raised would hide the error that made the undo run)."""
        try:
            await step()
        except DaemonUnavailable:
            self._pending[key] = step
            log.warning("bangerd-root unreachable; release queued until it answers", extra={"release": key})

    async def retry_pending(self) -> None:
        """Run the releases queued while bangerd-root was unreachable (each at most once more per call)."""
        for key, step in list(self._pending.items()):
            try:
                await step()
            except DaemonUnavailable:
                return  # still down: keep them all for the next call
            except Exception:
                log.warning("a queued release failed", extra={"release": key}, exc_info=True)
            self._pending.pop(key, None)

    async def acquire_tap(self) -> str:
        """A TAP on the bridge for a starting VM: from the warm pool when one is ready."""
        await self.ensure_bridge()
        await self.retry_pending()
        async with self._pool_lock:
            tap = self._pool.pop() if self._pool else None
        if tap is None or not await net.link_exists(tap):
            tap = await self._new_tap()
        self.schedule_refill()
        return tap

    async def release_tap(self, tap: str) -> None:
        """Delete a VM's TAP (idempotent)."""
        await self._release(f"tap {tap}", lambda: self.priv.delete_tap(tap))

    async def _new_tap(self) -> str:
        name = ipam.tap_name(self.tag, secrets.token_hex(8))
        await self.priv.create_tap(name, self.config.bridge_name, None)
        return name

    def schedule_refill(self) -> None:
        if self.config.tap_pool_size and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._fill_pool(), name="tap-pool-refill")

    async def _fill_pool(self) -> None:
        try:
            await self.ensure_bridge()
            while True:
                async with self._pool_lock:
                    if len(self._pool) >= self.config.tap_pool_size:
                        return
                tap = await self._new_tap()
                async with self._pool_lock:
                    self._pool.append(tap)
        except Exception:
            log.warning("could not refill the TAP pool; TAPs will be made on demand", exc_info=True)

    async def sweep_taps(self, in_use: set[str]) -> list[str]:
        """Delete this daemon's TAPs not in ``in_use`` and not in the pool (daemon start); returns them."""
        async with self._pool_lock:
            keep = in_use | set(self._pool)
        stale = [t for t in await net.list_links(ipam.tap_prefix(self.tag)) if t not in keep]
        for tap in stale:
            await self.priv.delete_tap(tap)
        return stale

    async def close(self) -> None:
        """Stop refilling and delete the idle pool TAPs (VM TAPs stay with their running VMs)."""
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        await self.retry_pending()
        async with self._pool_lock:
            pool, self._pool = self._pool, []
        for tap in pool:
            try:
                await self.priv.delete_tap(tap)
            except Exception:
                log.warning("could not delete pool TAP", extra={"tap": tap}, exc_info=True)

    # --- NAT ----------------------------------------------------------------------------------------

    async def add_nat(self, vm_id: str, ip: str) -> None:
        await self.priv.add_vm_nat(vm_id, ip, None)

    async def remove_nat(self, vm_id: str) -> None:
        await self._release(f"nat {vm_id}", lambda: self.priv.remove_vm_nat(vm_id))

    # --- TAP filters (no spoofing between guests) ---------------------------------------------------

    async def add_filter(self, vm_id: str, tap: str, mac: str, ip: str) -> None:
        await self.priv.add_tap_filter(vm_id, tap, mac, ip)

    async def remove_filter(self, vm_id: str) -> None:
        await self._release(f"filter {vm_id}", lambda: self.priv.remove_tap_filter(vm_id))

    async def sweep_rules(self, running: set[str]) -> list[str]:
        """Remove NAT rules and TAP filters of VMs that are not running (daemon start); their ids."""
        stale = {v for v in await self.priv.nat_vm_ids() if v not in running}
        stale |= {v for v in await self.priv.tap_filter_vm_ids() if v not in running}
        for vm_id in sorted(stale):
            await self.priv.remove_vm_nat(vm_id)
            await self.priv.remove_tap_filter(vm_id)
        return sorted(stale)
