"""Device-mapper snapshots through dmsetup: a writable copy-on-write view of a read-only base device.

Only devices named ``banger-*`` are created, listed or removed. Hosts without device-mapper (no
``/dev/mapper/control`` or no ``snapshot`` target) get a clear reason from :func:`available`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from banger.errors import HostError, InvalidArgument
from banger.host.run import run, which

PREFIX = "banger-"
NAME_RE = re.compile(r"^banger-[A-Za-z0-9_.-]{1,100}$")
CONTROL = Path("/dev/mapper/control")
CHUNK_SECTORS = 8  # 4 KiB copy-on-write chunks, the filesystem block size


@dataclass(frozen=True)
class Availability:
    """Whether dm snapshots can be made here, and if not, why."""

    ok: bool
    reason: str


def _has_control() -> bool:
    return os.path.exists(CONTROL)


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(f"{name!r} is not a banger device-mapper name (banger-<id>)")
    return name


async def available() -> Availability:
    """Check for dmsetup, ``/dev/mapper/control`` and the ``snapshot`` target."""
    if which("dmsetup") is None:
        return Availability(False, "dmsetup is not installed (apt-get install dmsetup)")
    if not _has_control():
        reason = f"{CONTROL} does not exist: this kernel has no device-mapper (modprobe dm_mod)"
        return Availability(False, reason)
    result = await run(["dmsetup", "targets"], check=False)
    if result.returncode != 0:
        return Availability(False, f"`dmsetup targets` failed: {result.err.strip() or result.out.strip()}")
    if not any(line.split()[:1] == ["snapshot"] for line in result.out.splitlines()):
        return Availability(False, "the device-mapper snapshot target is missing (modprobe dm_snapshot)")
    return Availability(True, "device-mapper snapshots are available")


async def require_available() -> None:
    """Raise HostError with the reason when dm snapshots cannot be made here."""
    status = await available()
    if not status.ok:
        raise HostError(
            f"device-mapper snapshots are not available: {status.reason}",
            hint="banger falls back to reflink or sparse copies; `banger doctor` shows which one is used",
        )


def snapshot_table(origin: str, cow: str, sectors: int) -> str:
    """The dm table line of a persistent snapshot of ``origin`` storing changes on ``cow`` (pure)."""
    return f"0 {sectors} snapshot {origin} {cow} P {CHUNK_SECTORS}"


def device_path(name: str) -> Path:
    """Where the kernel exposes dm device ``name``."""
    return Path("/dev/mapper") / _check_name(name)


async def create_snapshot(name: str, origin: str, cow: str, sectors: int) -> Path:
    """Create snapshot ``name`` over block devices ``origin`` (read) and ``cow`` (writes); return its path."""
    _check_name(name)
    await require_available()
    table = snapshot_table(origin, cow, sectors)
    try:
        await run(["dmsetup", "create", name, "--table", table])
    except HostError as exc:
        raise HostError(f"could not create device-mapper snapshot {name}: {exc.message}") from exc
    return device_path(name)


async def list_names() -> list[str]:
    """Names of the banger dm devices present (empty when device-mapper is unavailable)."""
    if not _has_control() or which("dmsetup") is None:
        return []
    result = await run(["dmsetup", "ls"], check=False)
    names = [line.split()[0] for line in result.out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(PREFIX))


async def remove(name: str) -> None:
    """Remove dm device ``name``; nothing happens if it does not exist."""
    _check_name(name)
    if name not in await list_names():
        return
    result = await run(["dmsetup", "remove", "--retry", name], check=False)
    if result.returncode != 0 and name in await list_names():
        raise HostError(
            f"could not remove device-mapper device {name}: {result.err.strip()}",
            hint=f"a VMM may still hold it open; stop it, then `dmsetup remove {name}`",
        )
