"""Guest address, MAC and TAP name allocation (banger.ipam, pure)."""

from __future__ import annotations

import re

import pytest

from banger import ipam
from banger.errors import Conflict, InvalidArgument


def test_allocate_takes_lowest_free_host_skipping_gateway() -> None:
    assert ipam.allocate("172.30.0.0/24", "172.30.0.1", set()) == "172.30.0.2"
    assert ipam.allocate("172.30.0.0/24", "172.30.0.1", {"172.30.0.2", "172.30.0.4"}) == "172.30.0.3"


def test_allocate_never_returns_network_or_broadcast() -> None:
    # /30 has two hosts: .1 is the gateway, so only .2 is left; .0 and .3 are never used.
    assert ipam.allocate("10.0.0.0/30", "10.0.0.1", set()) == "10.0.0.2"
    with pytest.raises(Conflict):
        ipam.allocate("10.0.0.0/30", "10.0.0.1", {"10.0.0.2"})


def test_allocate_gateway_not_first_host() -> None:
    assert ipam.allocate("10.1.0.0/29", "10.1.0.6", set()) == "10.1.0.1"
    taken = {f"10.1.0.{i}" for i in range(1, 6)}
    with pytest.raises(Conflict):
        ipam.allocate("10.1.0.0/29", "10.1.0.6", taken)


def test_full_network_message_counts_vms_and_suggests_bigger_cidr() -> None:
    taken = {f"192.168.9.{i}" for i in range(2, 255)}
    with pytest.raises(Conflict) as info:
        ipam.allocate("192.168.9.0/24", "192.168.9.1", taken)
    assert "253 VMs" in info.value.message
    assert "cidr" in (info.value.hint or "")


def test_allocate_rejects_bad_cidr() -> None:
    with pytest.raises(InvalidArgument):
        ipam.allocate("not-a-net", "10.0.0.1", set())
    with pytest.raises(InvalidArgument):
        ipam.allocate("fd00::/64", "fd00::1", set())


def test_mac_is_stable_local_unicast() -> None:
    mac = ipam.mac_for("vm-0123")
    assert mac == ipam.mac_for("vm-0123")
    assert mac != ipam.mac_for("vm-0124")
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
    first = int(mac[:2], 16)
    assert first & 0x02, "locally administered bit must be set"
    assert not first & 0x01, "multicast bit must be clear"


def test_macs_of_many_ids_are_all_local_unicast_and_distinct() -> None:
    macs = {ipam.mac_for(f"vm{i}") for i in range(2000)}
    assert len(macs) == 2000
    assert all(int(m[:2], 16) & 0x03 == 0x02 for m in macs)


def test_tap_name_fits_ifnamsiz_is_stable_and_carries_the_daemons_tag() -> None:
    tag = ipam.daemon_tag("/var/lib/banger")
    name = ipam.tap_name(tag, "pool-7")
    assert re.fullmatch(r"bgt-[0-9a-f]{10}", name) and name.startswith(ipam.tap_prefix(tag))
    assert len(name) <= 15
    assert name == ipam.tap_name(tag, "pool-7")
    assert name != ipam.tap_name(tag, "pool-8")
    assert not name.startswith(ipam.tap_prefix(ipam.daemon_tag("/home/me/.local/state/banger")))
