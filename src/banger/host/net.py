"""Links in the current network namespace through netlink (pyroute2): the bridge and per-VM TAP devices.

pyroute2's ``IPRoute`` is synchronous, so every call runs in a worker thread with its own socket.
All operations are idempotent: creating what exists or deleting what is gone is not an error.
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from banger.errors import HostError, InvalidArgument

T = TypeVar("T")
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def check_ifname(name: str) -> str:
    """``name`` if it is a valid interface name (<= 15 chars, no slashes or spaces)."""
    if not IFNAME_RE.match(name):
        raise InvalidArgument(
            f"{name!r} is not a valid network interface name",
            hint="use 1-15 letters, digits, '-', '_' or '.'",
        )
    return name


def _fail(device: str, action: str, exc: NetlinkError, hint: str) -> HostError:
    return HostError(f"could not {action} {device!r}: {exc.args[-1]} (errno {exc.code})", hint=hint)


async def _ip(fn: Callable[[IPRoute], T]) -> T:
    """Run ``fn`` with a fresh IPRoute socket in a worker thread."""

    def call() -> T:
        with IPRoute() as ipr:
            return fn(ipr)

    return await asyncio.to_thread(call)


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _link(ipr: IPRoute, name: str) -> Any | None:
    idx = _index(ipr, name)
    return ipr.get_links(idx)[0] if idx is not None else None


def _kind(link: Any) -> str | None:
    kind = link.get(("linkinfo", "kind"))
    return str(kind) if kind else None


def _ensure_bridge(ipr: IPRoute, name: str, ip: str, prefixlen: int) -> None:
    link = _link(ipr, name)
    if link is None:
        ipr.link("add", ifname=name, kind="bridge")
    elif _kind(link) != "bridge":
        raise HostError(
            f"{name!r} exists but is a {_kind(link) or 'plain'} device, not a bridge",
            hint=f"pick another `bridge` name in config.toml, or remove it: ip link del {name}",
        )
    idx = _index(ipr, name)
    have = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)}
    if (ip, prefixlen) not in have:
        ipr.addr("add", index=idx, address=ip, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")


async def ensure_bridge(name: str, ip: str, prefixlen: int) -> None:
    """Create bridge ``name`` if missing, give it ``ip/prefixlen`` and bring it up."""
    check_ifname(name)
    try:
        await _ip(lambda ipr: _ensure_bridge(ipr, name, ip, prefixlen))
    except NetlinkError as exc:
        raise _fail(name, "set up bridge", exc, "banger needs root (CAP_NET_ADMIN) for bridges") from exc


def _delete(ipr: IPRoute, name: str) -> None:
    idx = _index(ipr, name)
    if idx is None:
        return
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:  # deleted concurrently
            raise


async def remove_bridge(name: str) -> None:
    """Delete bridge ``name``; nothing happens if it does not exist."""
    check_ifname(name)
    try:
        await _ip(lambda ipr: _delete(ipr, name))
    except NetlinkError as exc:
        raise _fail(name, "remove bridge", exc, f"try by hand: ip link del {name}") from exc


def _create_tap(ipr: IPRoute, name: str, bridge: str, owner_uid: int | None) -> None:
    master = _index(ipr, bridge)
    if master is None:
        raise HostError(
            f"cannot attach TAP {name!r}: bridge {bridge!r} does not exist",
            hint="the network service creates the bridge first; restart bangerd to recreate it",
        )
    link = _link(ipr, name)
    if link is not None and _kind(link) != "tun":
        raise HostError(
            f"{name!r} exists but is a {_kind(link) or 'plain'} device, not a TAP",
            hint=f"remove it: ip link del {name}",
        )
    if link is None:
        extra: dict[str, Any] = {} if owner_uid is None else {"uid": owner_uid}
        flags = {"no_pi": True, "vnet_hdr": True, "one_queue": False, "multi_queue": False}
        ipr.link("add", ifname=name, kind="tuntap", mode="tap", ifr=flags, **extra)
    ipr.link("set", index=_index(ipr, name), master=master, state="up")


async def create_tap(name: str, bridge: str, owner_uid: int | None = None) -> None:
    """Create persistent TAP ``name`` (single queue, owned by ``owner_uid``), enslave it to ``bridge``, up."""
    check_ifname(name)
    check_ifname(bridge)
    try:
        await _ip(lambda ipr: _create_tap(ipr, name, bridge, owner_uid))
    except NetlinkError as exc:
        hint = "banger needs root (CAP_NET_ADMIN) and /dev/net/tun to create TAP devices"
        raise _fail(name, "create TAP", exc, hint) from exc
    except OSError as exc:  # the ioctl on /dev/net/tun
        raise HostError(
            f"could not create TAP {name!r}: {exc}", hint="check that /dev/net/tun exists (modprobe tun)"
        ) from exc


async def delete_tap(name: str) -> None:
    """Delete TAP ``name``; nothing happens if it does not exist."""
    check_ifname(name)
    try:
        await _ip(lambda ipr: _delete(ipr, name))
    except NetlinkError as exc:
        raise _fail(name, "delete TAP", exc, f"try by hand: ip link del {name}") from exc


async def list_links(prefix: str) -> list[str]:
    """Names of the links whose name starts with ``prefix``, sorted."""
    names = await _ip(lambda ipr: [str(link.get("ifname")) for link in ipr.get_links()])
    return sorted(n for n in names if n.startswith(prefix))


async def link_exists(name: str) -> bool:
    """Whether a link called ``name`` exists in this namespace."""
    return await _ip(lambda ipr: _index(ipr, name) is not None)


async def link_master(name: str) -> str | None:
    """The name of the bridge ``name`` is enslaved to, or None (also when ``name`` does not exist)."""

    def master(ipr: IPRoute) -> str | None:
        link = _link(ipr, name)
        idx = link.get("IFLA_MASTER") if link is not None else None
        return None if idx is None else str(ipr.get_links(idx)[0].get("ifname"))

    return await _ip(master)
