"""What the wire accepts, without pydantic: numeric ranges, word lists and the size and duration parsers.

The wire's models (``banger.wire``, which validate in the daemon) and the CLI's option types (``cli.params``,
which refuse a bad value before anything is sent) both read these, so the two cannot drift apart, and the
CLI's simple commands load neither pydantic nor the models to build their options.
"""

from __future__ import annotations

import re
from typing import Literal

RuntimeChoice = Literal["auto", "firecracker", "qemu"]
WorkspaceMode = Literal["shallow", "full_copy"]  # shallow: HEAD's commit only; full_copy: all of .git

VCPU = (1, 64)  # virtual CPUs of a VM
MEMORY_MIB = (128, 262144)  # a VM's memory in MiB
MIN_DISK = 256 << 20  # the daemon refuses smaller work disks (vm_create.build_spec)
MAX_DISK = 8 << 40  # a raw file on the host's ext4 (16T - 4K at most there) that os.truncate can make

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: str | int) -> int:
    """Bytes in ``"8G"``, ``"512M"``, ``"1024"`` (bytes) or an int."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size; use a number with K, M, G or T (e.g. 8G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_duration(value: str | int) -> int:
    """Seconds in ``"90s"``, ``"30m"``, ``"8h"``, ``"2d"``, or an int."""
    if isinstance(value, int):
        return value
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration; use e.g. 90s, 30m, 8h or 2d")
    return int(m.group(1)) * _SECONDS[m.group(2)]
