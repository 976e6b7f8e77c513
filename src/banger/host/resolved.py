"""Routing ``*.vm`` lookups to banger's DNS server through systemd-resolved (``resolvectl``), per link.

The bridge link gets banger's server (``127.0.0.1:42069``: resolved sends queries for a 127.0.0.1 server
over loopback even when the server belongs to another link) with ``~vm`` as a routing-only domain, no
DNSSEC (``.vm`` is not in the signed root, so validation would call every answer bogus) and no default
route, so no other lookup goes there. resolved only uses a link that has carrier: the bridge has it
while at least one VM's TAP is attached, which is exactly when there are names to resolve.
Called as root through :mod:`banger.host.privileged`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from banger.errors import InvalidArgument
from banger.host.net import check_ifname
from banger.host.run import run, which

STUB_RESOLV = Path("/run/systemd/resolve/stub-resolv.conf")
DEFAULT_SERVER = "127.0.0.1:42069"
_DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")


@dataclass(frozen=True)
class Availability:
    """Whether resolved can route ``.vm``, and why not (for ``banger doctor``)."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def available(stub: Path = STUB_RESOLV) -> Availability:
    """True when ``resolvectl`` is installed and systemd-resolved is running (its stub file exists)."""
    if which("resolvectl") is None:
        return Availability(False, "resolvectl is not installed (systemd-resolved is not in use)")
    if not stub.exists():
        return Availability(False, f"systemd-resolved is not running ({stub} does not exist)")
    return Availability(True, "systemd-resolved is running")


def check_server(server: str) -> str:
    """``server`` if it is ``ADDRESS`` or ``ADDRESS:PORT`` (``[v6]:PORT`` for IPv6); else InvalidArgument."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)|([0-9a-fA-F:.]+)", server)
    address = m and (m.group(1) or m.group(3) or m.group(5))
    port = m and (m.group(2) or m.group(4))
    try:
        ipaddress.ip_address(address or "")
    except ValueError as exc:
        raise InvalidArgument(f"{server!r} is not a DNS server address", hint="e.g. 127.0.0.1:42069") from exc
    if port is not None and not 0 < int(port) < 65536:
        raise InvalidArgument(f"{server!r}: port {port} is out of range")
    return server


def check_domain(domain: str) -> str:
    """``domain`` if it is a plain DNS domain such as ``vm``; else InvalidArgument."""
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"{domain!r} is not a DNS domain", hint="e.g. vm")
    return domain


def route_commands(link: str, server: str = DEFAULT_SERVER, domain: str = "vm") -> list[list[str]]:
    """The ``resolvectl`` command lines that send ``*.<domain>`` lookups on ``link`` to ``server``."""
    check_ifname(link)
    check_server(server)
    check_domain(domain)
    return [
        ["resolvectl", "dns", link, server],
        ["resolvectl", "domain", link, f"~{domain}"],
        ["resolvectl", "dnssec", link, "no"],
        ["resolvectl", "default-route", link, "no"],
    ]


def unroute_command(link: str) -> list[str]:
    """The ``resolvectl`` command line that drops every per-link setting of ``link``."""
    check_ifname(link)
    return ["resolvectl", "revert", link]


async def route_vm_domain(link: str, server: str = DEFAULT_SERVER, *, domain: str = "vm") -> None:
    """Route ``*.<domain>`` on ``link`` to ``server``; on failure the link is reverted, then the error raised."""
    commands = route_commands(link, server, domain)
    async with contextlib.AsyncExitStack() as undo:
        undo.push_async_callback(unroute, link)
        for argv in commands:
            await run(argv, timeout=30)
        undo.pop_all()


async def unroute(link: str) -> None:
    """Forget banger's settings for ``link`` (nothing to do when the link or its settings are gone)."""
    await run(unroute_command(link), check=False, timeout=30)
