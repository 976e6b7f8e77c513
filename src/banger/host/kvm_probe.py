"""Can KVM really boot a Firecracker guest here? A cached boot probe, and runtime selection from its answer.

``/dev/kvm`` existing proves little: on some hosts Firecracker accepts a full configuration and
``InstanceStart``, then the guest spins in emulation and dies a minute later. So the probe boots banger's
own kernel and initrd with ``banger.probe=1`` (the init prints ``BANGER-PROBE-OK`` and powers off) and
decides within seconds. The answer is cached per (Firecracker version, kernel, initrd, host kernel,
/dev/kvm presence).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from banger.errors import HostError, InvalidArgument
from banger.host.firecracker import FirecrackerVMM, firecracker_version
from banger.host.http import sha256_file
from banger.host.vmm import VMM_LOG, Handle, LaunchSpec, log_tail

PROBE_MARKER = b"BANGER-PROBE-OK"
PROBE_CMDLINE = "console=ttyS0 reboot=k panic=1 banger.probe=1"
CACHE_FILE = "kvm-probe.json"
DEV_KVM = Path("/dev/kvm")
RUNTIMES = ("auto", "firecracker", "qemu")


@dataclass(frozen=True)
class ProbeResult:
    """The probe's verdict and a one-line reason a person can act on."""

    ok: bool
    reason: str


async def probe_kvm_boot(
    firecracker_bin: str | Path,
    kernel: Path,
    initrd: Path,
    workdir: Path,
    timeout: float = 8.0,  # noqa: ASYNC109 - part of the probe's public signature
    *,
    refresh: bool = False,
) -> ProbeResult:
    """Boot ``kernel``+``initrd`` under Firecracker and report whether the guest came up.

    The verdict is cached in ``workdir/kvm-probe.json``; ``refresh`` ignores the cache.
    """
    key = await probe_key(str(firecracker_bin), kernel, initrd)
    cache = workdir / CACHE_FILE
    cached = None if refresh else read_cache(cache, key)
    if cached is not None:
        return cached
    result, definitive = await run_probe(str(firecracker_bin), kernel, initrd, workdir, timeout)
    if definitive:
        write_cache(cache, key, result)
    return result


async def probe_key(firecracker_bin: str, kernel: Path, initrd: Path) -> dict[str, Any]:
    """What the verdict depends on; a change in any of it means probing again."""
    version = await firecracker_version(firecracker_bin)
    kernel_sha, initrd_sha = await asyncio.gather(
        asyncio.to_thread(sha256_file, kernel), asyncio.to_thread(sha256_file, initrd))
    return {
        "firecracker": ".".join(map(str, version)),
        "kernel_sha256": kernel_sha,
        "initrd_sha256": initrd_sha,
        "host_kernel": os.uname().release,
        "dev_kvm": DEV_KVM.exists(),
    }


def read_cache(cache: Path, key: dict[str, Any]) -> ProbeResult | None:
    """The cached verdict for ``key``, or None (absent, unreadable or for another key)."""
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return ProbeResult(ok=bool(data["ok"]), reason=str(data["reason"]))


def write_cache(cache: Path, key: dict[str, Any], result: ProbeResult) -> None:
    """Store the verdict for ``key`` (atomically: a torn file would read as no cache anyway)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    staged = cache.with_suffix(".tmp")
    staged.write_text(json.dumps({"key": key, **asdict(result), "probed_at": time.time()}, indent=2))
    os.replace(staged, cache)


async def run_probe(
    firecracker_bin: str, kernel: Path, initrd: Path, workdir: Path, within: float
) -> tuple[ProbeResult, bool]:
    """Boot the probe guest once; also say whether the verdict is worth caching."""
    if not DEV_KVM.exists():
        return ProbeResult(False, f"{DEV_KVM} does not exist (no KVM on this host)"), True
    vm_dir = workdir / f"probe-{uuid.uuid4().hex[:8]}"
    spec = LaunchSpec(vm_id=vm_dir.name, name="kvm-probe", kernel=kernel, initrd=initrd,
                      cmdline=PROBE_CMDLINE, disks=(), tap=None, mac=None, vcpu=1, memory_mib=256,
                      vm_dir=vm_dir)
    vmm = FirecrackerVMM(firecracker_bin)
    started = time.monotonic()
    try:
        handle = await vmm.launch(spec)
    except HostError as exc:
        shutil.rmtree(vm_dir, ignore_errors=True)
        # Not cached: a permission problem on /dev/kvm, for one, can be fixed without changing the key.
        return ProbeResult(False, f"Firecracker could not start a guest: {exc.message}"), False
    try:
        return await wait_probe_verdict(vmm, handle, started, within), True
    finally:
        await vmm.kill(handle)
        shutil.rmtree(vm_dir, ignore_errors=True)


async def wait_probe_verdict(vmm: FirecrackerVMM, handle: Handle, started: float, within: float) -> ProbeResult:
    """Watch the console until the marker appears, Firecracker exits, or ``within`` seconds from ``started``."""
    while True:
        elapsed = time.monotonic() - started
        if PROBE_MARKER in _read(handle.console_log):
            return ProbeResult(True, f"a Firecracker guest booted in {elapsed:.1f}s")
        if not vmm.is_alive(handle):
            tail = log_tail(handle.vm_dir / VMM_LOG, 2)
            return ProbeResult(False, f"the Firecracker guest died before booting ({tail or 'no log'})")
        if elapsed >= within:
            return ProbeResult(False, f"a Firecracker guest did not boot within {within:g}s "
                                      "(KVM accepts the VM but cannot run it on this host)")
        await asyncio.sleep(0.1)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def select_runtime(requested: str, probe: ProbeResult | None) -> tuple[str, str, str]:
    """``(runtime, accel, reason_line)`` for a requested runtime and the probe's verdict (None: not probed).

    Never silently weaker than asked: ``firecracker`` without a passing probe is an error, and ``auto``
    falling back to QEMU emulation says so in ``reason_line``.
    """
    if requested not in RUNTIMES:
        raise InvalidArgument(f"unknown runtime {requested!r}", hint="use auto, firecracker or qemu")
    kvm_ok = probe is not None and probe.ok
    why = probe.reason if probe is not None else "the KVM boot probe has not run"
    if requested == "qemu":
        accel = "kvm" if kvm_ok else "tcg"
        return "qemu", accel, f"runtime qemu with {'KVM' if kvm_ok else 'TCG emulation'}"
    if kvm_ok:
        return "firecracker", "kvm", f"runtime {requested}: Firecracker with KVM ({why})"
    if requested == "firecracker":
        raise HostError(f"runtime firecracker needs KVM, but KVM cannot boot guests here: {why}",
                        hint="use --runtime qemu (TCG emulation: slower, but a real VM)")
    return "qemu", "tcg", f"runtime auto: QEMU with TCG emulation, because {why}"
