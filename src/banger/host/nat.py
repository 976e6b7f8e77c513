"""Outbound NAT for guests through one banger-owned nftables table, ``inet banger``.

Layout (one ``inet`` table, so a single ``delete table`` removes everything banger ever added)::

    table inet banger {
        chain forward     { type filter hook forward priority filter; policy accept; }
        chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
    }

Each VM with NAT gets three rules, all carrying the comment ``banger:<vm_id>``: forward accept from the
guest, forward accept of established/related replies to it, and masquerade of its traffic. The chains'
policy is accept, so the table never blocks anything; the accept rules only count and document the flows
(a drop in another table, such as a host firewall's, still wins: nftables evaluates every base chain).
Rules are found by their comment in ``nft -j`` output and deleted by handle, in one atomic ``nft -f``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import HostError, InvalidArgument
from banger.host.net import check_ifname
from banger.host.run import run

FAMILY = "inet"
TABLE = "banger"
CHAINS = ("forward", "postrouting")
COMMENT_PREFIX = "banger:"
VM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True)
class NatRule:
    """One rule of the banger table as nft reports it."""

    chain: str
    handle: int
    comment: str
    expr: list[Any]


def check_vm_id(vm_id: str) -> str:
    if not VM_ID_RE.match(vm_id):
        raise InvalidArgument(f"{vm_id!r} cannot tag an nft rule", hint="use letters, digits, '-', '_'")
    return vm_id


def check_ipv4(guest_ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(guest_ip))
    except ValueError as exc:
        raise InvalidArgument(f"{guest_ip!r} is not an IPv4 guest address") from exc


def table_script() -> str:
    """The nft commands creating the table and its chains (``add`` is a no-op for what exists)."""
    return (
        f"add table {FAMILY} {TABLE}\n"
        f"add chain {FAMILY} {TABLE} forward "
        "{ type filter hook forward priority filter; policy accept; }\n"
        f"add chain {FAMILY} {TABLE} postrouting "
        "{ type nat hook postrouting priority srcnat; policy accept; }\n"
    )


def vm_rules_script(vm_id: str, guest_ip: str, out_iface: str | None, mark: int | None = None) -> str:
    """The nft commands adding the rules of one VM (pure; inputs validated).

    ``mark`` is the packet mark the VM's TAP filter sets on everything from that TAP (host.tapfilter):
    matching it as well as the address means only the VM's own TAP gets its NAT.
    """
    tag = f'comment "{COMMENT_PREFIX}{check_vm_id(vm_id)}"'
    ip = check_ipv4(guest_ip)
    oif = f'oifname "{check_ifname(out_iface)}" ' if out_iface else ""
    own = f"meta mark {_check_mark(mark)} " if mark is not None else ""
    base = f"add rule {FAMILY} {TABLE}"
    return (
        f"{base} forward ip saddr {ip} {own}{oif}accept {tag}\n"
        f"{base} forward ip daddr {ip} ct state established,related accept {tag}\n"
        f"{base} postrouting ip saddr {ip} {own}{oif}masquerade {tag}\n"
    )


def _check_mark(mark: int) -> str:
    if not isinstance(mark, int) or not 0 < mark < 1 << 32:
        raise InvalidArgument(f"{mark!r} is not a packet mark (1 .. 2^32-1)")
    return f"0x{mark:08x}"


def delete_script(rules: list[NatRule], family: str = FAMILY, table: str = TABLE) -> str:
    """The nft commands deleting ``rules`` of ``family table`` by handle (pure)."""
    return "".join(f"delete rule {family} {table} {r.chain} handle {r.handle}\n" for r in rules)


def parse_rules(listing: dict[str, Any]) -> dict[str, list[NatRule]]:
    """Group the banger-tagged rules of an ``nft -j list table`` document by VM id (pure)."""
    out: dict[str, list[NatRule]] = {}
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        comment = (rule or {}).get("comment", "")
        if not rule or not comment.startswith(COMMENT_PREFIX):
            continue
        nat_rule = NatRule(rule["chain"], int(rule["handle"]), comment, rule.get("expr", []))
        out.setdefault(comment[len(COMMENT_PREFIX) :], []).append(nat_rule)
    return out


async def apply(script: str) -> None:
    """Run an nft script atomically (``nft -f -``); HostError saying what banger needs when refused."""
    await _nft(script)


async def _nft(script: str) -> None:
    try:
        await run(["nft", "-f", "-"], input=script.encode())
    except HostError as exc:
        raise HostError(
            f"nftables refused banger's rules: {exc.message}",
            hint="banger needs root (CAP_NET_ADMIN) and a kernel with nf_tables (modprobe nf_tables)",
        ) from exc


async def table_exists() -> bool:
    """Whether ``table inet banger`` exists."""
    result = await run(["nft", "-j", "list", "tables", FAMILY])
    items = json.loads(result.out or "{}").get("nftables", [])
    return any(i.get("table", {}).get("name") == TABLE for i in items)


async def ensure_table() -> None:
    """Create the banger table and its two chains if they are missing."""
    await _nft(table_script())


async def list_vm_nat() -> dict[str, list[NatRule]]:
    """Every VM's NAT rules, keyed by VM id; empty when the table does not exist."""
    if not await table_exists():
        return {}
    result = await run(["nft", "-j", "list", "table", FAMILY, TABLE])
    return parse_rules(json.loads(result.out))


async def add_vm_nat(vm_id: str, guest_ip: str, out_iface: str | None = None, mark: int | None = None) -> None:
    """Give ``guest_ip`` outbound NAT (via ``out_iface`` or any link), replacing earlier rules of ``vm_id``.

    Old rules are deleted and new ones added in one nft transaction, so a failure changes nothing.
    """
    script = vm_rules_script(vm_id, guest_ip, out_iface, mark)
    await ensure_table()
    old = (await list_vm_nat()).get(vm_id, [])
    await _nft(delete_script(old) + script)


async def remove_vm_nat(vm_id: str) -> None:
    """Delete every rule tagged ``banger:<vm_id>``; nothing happens if there are none."""
    check_vm_id(vm_id)
    rules = (await list_vm_nat()).get(vm_id, [])
    if rules:
        await _nft(delete_script(rules))


async def drop_table() -> None:
    """Delete the banger table with all its rules; nothing happens if it does not exist."""
    if await table_exists():
        await _nft(f"delete table {FAMILY} {TABLE}\n")


def ip_forward_enabled() -> bool:
    """Whether IPv4 forwarding is on in this network namespace."""
    return IP_FORWARD.read_text().strip() == "1"


def enable_ip_forward() -> None:
    """Turn IPv4 forwarding on (needed only when a VM asks for NAT); a no-op if already on."""
    if ip_forward_enabled():
        return
    try:
        IP_FORWARD.write_text("1\n")
    except OSError as exc:
        raise HostError(
            f"could not enable IPv4 forwarding ({IP_FORWARD}): {exc}",
            hint="run bangerd as root, or enable it once: sysctl -w net.ipv4.ip_forward=1",
        ) from exc
