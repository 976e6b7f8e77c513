"""Named network namespaces through iproute2 (``ip netns``): create, delete, list processes, exec into."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from banger.errors import InvalidArgument
from banger.host.run import run_sync

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NETNS_DIR = Path("/run/netns")


def check_name(name: str) -> str:
    """``name`` if it is a safe namespace name."""
    if not NAME_RE.match(name):
        raise InvalidArgument(f"{name!r} is not a valid network namespace name")
    return name


def netns_argv(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs inside namespace ``name``."""
    return ["ip", "netns", "exec", check_name(name), *argv]


def exists(name: str) -> bool:
    """Whether namespace ``name`` exists."""
    return (NETNS_DIR / check_name(name)).exists()


def add(name: str) -> None:
    """Create namespace ``name`` with ``lo`` up (blocking: used from CLI tools and test fixtures)."""
    run_sync(["ip", "netns", "add", check_name(name)])
    run_sync(netns_argv(name, ["ip", "link", "set", "lo", "up"]))


def pids(name: str) -> list[int]:
    """The processes running inside namespace ``name``."""
    if not exists(name):
        return []
    result = run_sync(["ip", "netns", "pids", check_name(name)], check=False)
    return [int(p) for p in result.out.split() if p.isdigit()]


def delete(name: str) -> None:
    """Delete namespace ``name``; nothing happens if it does not exist."""
    if exists(name):
        run_sync(["ip", "netns", "del", check_name(name)])
