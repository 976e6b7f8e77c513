"""RuntimeService: which VMM runs a VM (``auto|firecracker|qemu``), decided by a cached KVM boot probe, and
whether Firecracker runs under its jailer (``jailer = auto|true|false``)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from banger.config import Config
from banger.host import kvm_probe
from banger.host.firecracker import FirecrackerVMM, Jail
from banger.host.jail import jail_base
from banger.host.privileged import Privileged, RemotePrivileged, local
from banger.host.run import which
from banger.host.vmm import VMM, driver_for
from banger.paths import Layout

log = logging.getLogger("banger.daemon.runtime")


@dataclass(frozen=True)
class Choice:
    runtime: str  # "firecracker" | "qemu"
    accel: str  # "kvm" | "tcg"
    note: str  # one line for the user, e.g. "runtime auto: QEMU with TCG emulation, because ..."


def jail_decision(setting: str | bool, jailer_bin: str, found: str | None, root_at_hand: bool) -> tuple[bool, str]:
    """Whether to jail Firecracker, and the one line that says why (empty for ``jailer = false``)."""
    if setting is False:
        return False, ""
    if found is None:
        why = f"no jailer was found at {jailer_bin!r}"
    elif not root_at_hand:
        why = "the jailer needs root, and the daemon is not root and has no bangerd-root"
    else:
        return True, f"Firecracker runs under its jailer ({found})"
    if setting is True:
        return False, f"jailer = true in config.toml, but {why}"
    return False, f"jailer auto: plain Firecracker, because {why}"


class RuntimeService:
    """Chooses runtimes and hands out VMM drivers; the probe runs at most once at a time (leaf lock)."""

    def __init__(self, config: Config, layout: Layout, priv: Privileged | None = None):
        self.config = config
        self.layout = layout
        self.priv = priv or local()
        self._probe_lock = asyncio.Lock()
        self._noted = ""

    def driver(self, runtime: str) -> VMM:
        if runtime == "firecracker":
            return FirecrackerVMM(self.config.firecracker_bin, jail=self.jail(), priv=self.priv)
        return driver_for(runtime, firecracker_bin=self.config.firecracker_bin, qemu_bin=self.config.qemu_bin)

    def jail(self) -> Jail | None:
        """How Firecracker is jailed now (None: it is not); decided afresh, so a jailer installed later counts.

        The jailed Firecracker runs as the daemon's own user: the owner under a system install (bangerd-root
        checks that it is), root when everything runs as root. Every TAP, disk and device node is made for
        that user already, so any other uid would need them all re-owned for no gain in the root case.
        """
        found = which(self.config.jailer_bin)
        root_at_hand = os.geteuid() == 0 or isinstance(self.priv, RemotePrivileged)
        use, note = jail_decision(self.config.jailer, self.config.jailer_bin, found, root_at_hand)
        if note != self._noted:
            log.info("jailer", extra={"note": note})
            self._noted = note
        base = jail_base(self.layout.state_dir)
        if use and found is not None:
            return Jail(os.path.realpath(found), base, os.geteuid(), os.getegid(), self.priv)
        if self.config.jailer is True:
            return Jail(self.config.jailer_bin, base, os.geteuid(), os.getegid(), None, unavailable=note)
        return None

    def jail_note(self) -> str:
        """The jailer line for a Firecracker VM's runtime note (empty when jailer = false)."""
        return jail_decision(self.config.jailer, self.config.jailer_bin, which(self.config.jailer_bin),
                             os.geteuid() == 0 or isinstance(self.priv, RemotePrivileged))[1]

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
        if runtime == "firecracker" and (jailing := self.jail_note()):
            note = f"{note}; {jailing}" if note else jailing
        log.info("runtime chosen", extra={"requested": requested, "runtime": runtime, "accel": accel})
        return Choice(runtime, accel, note)
