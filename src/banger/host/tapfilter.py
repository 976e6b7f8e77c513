"""Each VM's TAP passes only frames from that VM's own MAC and IPv4 address: one nftables bridge table.

Layout (``table bridge banger``, hooked before the bridge forwards or delivers anything)::

    table bridge banger {
        chain prerouting { type filter hook prerouting priority -200; policy accept; }
    }

Per running VM, rules tagged ``banger:<vm_id>`` on ``iifname <tap>``: drop frames whose source MAC is not
the VM's, ARP whose sender MAC or IP is not the VM's, IPv4 whose source is not the VM's address, and any
other ethertype (the guests are IPv4-only); then mark what passes with the VM's packet mark (its IPv4
address as a number), which the NAT rules (host.nat) match as well as the address. So a guest can neither
answer ARP for another VM's address while that VM boots, nor send as another VM, nor borrow a NAT VM's
address to get out. Rules are found by their comment and deleted by handle, in one atomic ``nft -f``.
"""

from __future__ import annotations

import ipaddress
import json
import re

from banger.errors import InvalidArgument
from banger.host import nat
from banger.host.net import check_ifname
from banger.host.run import run

FAMILY = "bridge"
TABLE = "banger"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def mark_for(guest_ip: str) -> int:
    """The packet mark of the VM at ``guest_ip``: its address as a 32-bit number (unique on the bridge)."""
    return int(ipaddress.IPv4Address(guest_ip))


def table_script() -> str:
    """The nft commands creating the table and its chain (``add`` is a no-op for what exists)."""
    return (f"add table {FAMILY} {TABLE}\n"
            f"add chain {FAMILY} {TABLE} prerouting "
            "{ type filter hook prerouting priority -200; policy accept; }\n")


def _check_mac(mac: str) -> str:
    if not _MAC_RE.match(mac):
        raise InvalidArgument(f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff, lower case)")
    return mac


def vm_rules_script(vm_id: str, tap: str, mac: str, guest_ip: str) -> str:
    """The nft commands adding the filter of one VM's TAP (pure; inputs validated)."""
    tag = f'comment "{nat.COMMENT_PREFIX}{nat.check_vm_id(vm_id)}"'
    on = f'add rule {FAMILY} {TABLE} prerouting iifname "{check_ifname(tap)}"'
    mac, ip = _check_mac(mac), nat.check_ipv4(guest_ip)
    return (
        f"{on} ether saddr != {mac} drop {tag}\n"
        f"{on} ether type arp arp saddr ether != {mac} drop {tag}\n"
        f"{on} ether type arp arp saddr ip != {ip} drop {tag}\n"
        f"{on} ether type ip ip saddr != {ip} drop {tag}\n"
        f"{on} ether type != {{ ip, arp }} drop {tag}\n"
        f"{on} meta mark set 0x{mark_for(ip):08x} {tag}\n"
    )


async def _table_exists() -> bool:
    result = await run(["nft", "-j", "list", "tables", FAMILY])
    items = json.loads(result.out or "{}").get("nftables", [])
    return any(i.get("table", {}).get("name") == TABLE for i in items)


async def list_filters() -> dict[str, list[nat.NatRule]]:
    """Every VM's TAP filter rules, keyed by VM id; empty when the table does not exist."""
    if not await _table_exists():
        return {}
    result = await run(["nft", "-j", "list", "table", FAMILY, TABLE])
    return nat.parse_rules(json.loads(result.out))


async def add_filter(vm_id: str, tap: str, mac: str, guest_ip: str) -> None:
    """Filter ``tap`` to ``mac``/``guest_ip``, replacing earlier rules of ``vm_id`` in one transaction."""
    script = vm_rules_script(vm_id, tap, mac, guest_ip)
    await nat.apply(table_script())
    old = (await list_filters()).get(vm_id, [])
    await nat.apply(nat.delete_script(old, FAMILY, TABLE) + script)


async def remove_filter(vm_id: str) -> None:
    """Delete the TAP filter of ``vm_id``; nothing happens if there is none."""
    nat.check_vm_id(vm_id)
    rules = (await list_filters()).get(vm_id, [])
    if rules:
        await nat.apply(nat.delete_script(rules, FAMILY, TABLE))


async def drop_table() -> None:
    """Delete the whole table (tests and uninstall)."""
    if await _table_exists():
        await nat.apply(f"delete table {FAMILY} {TABLE}\n")
