"""Address and name allocation for VMs on the bridge: guest IPs, MACs and TAP names (pure, no I/O)."""

from __future__ import annotations

import hashlib
import ipaddress

from banger.errors import Conflict, InvalidArgument

TAP_PREFIX = "bgt-"


def _network(cidr: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"bridge network {cidr!r} is not a CIDR", hint="e.g. 172.30.0.0/24") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"bridge network {cidr!r} must be IPv4", hint="e.g. 172.30.0.0/24")
    return net


def allocate(cidr: str, gateway: str, taken: set[str]) -> str:
    """The lowest host address in ``cidr`` that is not the gateway and not in ``taken``.

    The network and broadcast addresses are never handed out (``hosts()`` skips them).
    """
    net = _network(cidr)
    reserved = {gateway, *taken}
    for host in net.hosts():
        if str(host) not in reserved:
            return str(host)
    raise Conflict(
        f"no free guest address left in {net} ({len(taken)} VMs hold addresses, the gateway is {gateway})",
        hint="remove unused VMs (`banger vm rm`) or set a bigger `cidr` (e.g. a /20) in config.toml",
    )


def mac_for(vm_id: str) -> str:
    """A stable, locally administered, unicast MAC derived from ``vm_id``."""
    digest = bytearray(hashlib.sha256(vm_id.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02  # clear multicast bit, set locally-administered bit
    return ":".join(f"{b:02x}" for b in digest)


def daemon_tag(state_dir: str) -> str:
    """4 hex digits naming one daemon (by its state dir): its TAPs start with ``bgt-<tag>``, and its start-up
    sweep deletes only those, never another daemon's in the same network namespace."""
    return hashlib.sha256(state_dir.encode()).hexdigest()[:4]


def tap_prefix(tag: str) -> str:
    return f"{TAP_PREFIX}{tag}"


def tap_name(tag: str, slot_id: str) -> str:
    """The TAP device name for a pool slot of daemon ``tag``: ``bgt-`` + 4 + 6 hex digits (fits IFNAMSIZ)."""
    return tap_prefix(tag) + hashlib.sha256(slot_id.encode()).hexdigest()[:6]
