"""RuntimeService: which VMM runs a VM (``auto|firecracker|qemu``), decided by a cached KVM boot probe."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from banger.config import Config
from banger.host import kvm_probe
from banger.host.run import which
from banger.host.vmm import VMM, driver_for
from banger.paths import Layout

log = logging.getLogger("banger.daemon.runtime")


@dataclass(frozen=True)
class Choice:
    runtime: str  # "firecracker" | "qemu"
    accel: str  # "kvm" | "tcg"
    note: str  # one line for the user, e.g. "runtime auto: QEMU with TCG emulation, because ..."


class RuntimeService:
    """Chooses runtimes and hands out VMM drivers; the probe runs at most once at a time (leaf lock)."""

    def __init__(self, config: Config, layout: Layout):
        self.config = config
        self.layout = layout
        self._probe_lock = asyncio.Lock()

    def driver(self, runtime: str) -> VMM:
        return driver_for(runtime, firecracker_bin=self.config.firecracker_bin, qemu_bin=self.config.qemu_bin)

    async def probe(self, kernel: Path, initrd: Path) -> kvm_probe.ProbeResult:
        """The (cached) verdict on whether Firecracker + KVM can boot a guest on this host."""
        if not which(self.config.firecracker_bin):
            return kvm_probe.ProbeResult(False, f"Firecracker ({self.config.firecracker_bin}) is not installed")
        async with self._probe_lock:
            return await kvm_probe.probe_kvm_boot(self.config.firecracker_bin, kernel, initrd,
                                                  self.layout.cache_dir, self.config.probe_timeout_seconds)

    async def choose(self, requested: str, kernel: Path, initrd: Path) -> Choice:
        """The runtime for a VM asked to run with ``requested``; never silently weaker than asked."""
        probe = await self.probe(kernel, initrd) if requested != "qemu" or which(self.config.firecracker_bin) \
            else None
        runtime, accel, note = kvm_probe.select_runtime(requested, probe)
        log.info("runtime chosen", extra={"requested": requested, "runtime": runtime, "accel": accel})
        return Choice(runtime, accel, note)
