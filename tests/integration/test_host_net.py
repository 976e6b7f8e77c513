"""Bridge, TAP and NAT management against the real kernel, always inside a throwaway network namespace."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.errors import HostError
from banger.host import netns
from banger.host.run import run_sync, spawn_detached
from banger.testing.netns import NetNS, netns_argv

BRIDGE = "bgtestbr0"


@pytest.fixture
def ns() -> Iterator[NetNS]:
    with NetNS() as space:
        yield space


def in_ns(ns: NetNS, body: str) -> Any:
    """Run async ``body`` (which sets ``result``) inside ``ns`` with banger imported; return ``result``."""
    code = (
        "import asyncio, json\n"
        "from banger import errors\n"
        "from banger.host import net, nat\n"
        "async def main():\n"
        "    result = None\n"
        f"{textwrap.indent(textwrap.dedent(body), '    ')}\n"
        "    return result\n"
        "print(json.dumps(asyncio.run(main())))\n"
    )
    return json.loads(ns.run([sys.executable, "-c", code]).out.strip().splitlines()[-1])


def link_json(ns: NetNS, name: str) -> dict[str, Any]:
    out = ns.run(["ip", "-j", "-d", "addr", "show", "dev", name]).out
    return json.loads(out)[0]


def ruleset(ns: NetNS) -> list[dict[str, Any]]:
    doc = json.loads(ns.run(["nft", "-j", "list", "ruleset"]).out)
    return [item for item in doc["nftables"] if "metainfo" not in item]


def test_netns_helper_creates_lo_up_and_kills_leftovers(tmp_path: Path) -> None:
    with NetNS() as space:
        assert netns.exists(space.name)
        lo = json.loads(space.run(["ip", "-j", "link", "show", "lo"]).out)[0]
        assert "UP" in lo["flags"]
        pid = spawn_detached(netns_argv(space.name, ["sleep", "600"]), log_path=tmp_path / "sleep.log")
        deadline = time.monotonic() + 5
        while pid not in netns.pids(space.name) and time.monotonic() < deadline:
            time.sleep(0.02)  # `ip netns exec` enters the namespace just after it starts
        assert pid in netns.pids(space.name)
    assert not netns.exists(space.name)
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}").exists() else "gone"
    assert state in ("Z", "gone"), f"process {pid} left running in state {state}"
    try:
        os.waitpid(pid, 0)  # reap the zombie: spawn_detached made us its parent
    except ChildProcessError:
        pass


def test_bridge_and_tap_are_idempotent_and_tap_is_on_bridge(ns: NetNS) -> None:
    result = in_ns(
        ns,
        f"""
        for _ in range(2):
            await net.ensure_bridge("{BRIDGE}", "172.30.0.1", 24)
        for _ in range(2):
            await net.create_tap("bgt-0000abcd", "{BRIDGE}", owner_uid=1000)
        result = {{"links": await net.list_links("bgt-"), "master": await net.link_master("bgt-0000abcd"),
                  "exists": await net.link_exists("bgt-0000abcd")}}
        """,
    )
    assert result == {"links": ["bgt-0000abcd"], "master": BRIDGE, "exists": True}
    bridge = link_json(ns, BRIDGE)
    assert "UP" in bridge["flags"]
    assert [(a["local"], a["prefixlen"]) for a in bridge["addr_info"] if a["family"] == "inet"] == [("172.30.0.1", 24)]
    tap = link_json(ns, "bgt-0000abcd")
    info = tap["linkinfo"]["info_data"]
    assert (info["type"], info["multi_queue"], info["persist"]) == ("tap", False, True)
    assert tap["master"] == BRIDGE and "UP" in tap["flags"]
    gone = in_ns(
        ns,
        f"""
        for _ in range(2):
            await net.delete_tap("bgt-0000abcd")
        for _ in range(2):
            await net.remove_bridge("{BRIDGE}")
        result = [await net.link_exists("bgt-0000abcd"), await net.link_exists("{BRIDGE}")]
        """,
    )
    assert gone == [False, False]
    root_links = json.loads(run_sync(["ip", "-j", "link", "show"]).out)
    assert not [link for link in root_links if link["ifname"] in (BRIDGE, "bgt-0000abcd")]


def test_tap_without_bridge_and_wrong_kind_bridge_fail_clearly(ns: NetNS) -> None:
    ns.run(["ip", "link", "add", "bgtestveth", "type", "veth", "peer", "name", "bgtestveth1"])
    messages = in_ns(
        ns,
        """
        result = []
        for call in (net.create_tap("bgt-00000001", "nosuchbr"), net.ensure_bridge("bgtestveth", "10.9.0.1", 24)):
            try:
                await call
                result.append("no error")
            except errors.HostError as exc:
                result.append(str(exc))
        result.append(await net.link_exists("bgt-00000001"))
        """,
    )
    assert "bridge 'nosuchbr' does not exist" in messages[0]
    assert "'bgtestveth' exists but is a veth device, not a bridge" in messages[1]
    assert messages[2] is False


def test_nat_add_remove_restores_ruleset_and_is_idempotent(ns: NetNS) -> None:
    in_ns(ns, "await nat.ensure_table()")
    before = ruleset(ns)
    listed = in_ns(
        ns,
        """
        await nat.add_vm_nat("vm1", "172.30.0.2", "eth0")
        await nat.add_vm_nat("vm1", "172.30.0.2", "eth0")  # replaces, does not duplicate
        await nat.add_vm_nat("vm2", "172.30.0.3", None)
        rules = await nat.list_vm_nat()
        result = {vm: sorted(r.chain for r in rs) for vm, rs in rules.items()}
        """,
    )
    assert listed == {
        "vm1": ["forward", "forward", "postrouting"],
        "vm2": ["forward", "forward", "postrouting"],
    }
    text = ns.run(["nft", "list", "table", "inet", "banger"]).out
    assert 'ip saddr 172.30.0.2 oifname "eth0" masquerade comment "banger:vm1"' in text
    assert 'ip saddr 172.30.0.3 masquerade comment "banger:vm2"' in text
    left = in_ns(
        ns,
        """
        for _ in range(2):
            await nat.remove_vm_nat("vm1")
        result = sorted(await nat.list_vm_nat())
        await nat.remove_vm_nat("vm2")
        """,
    )
    assert left == ["vm2"]
    assert ruleset(ns) == before
    in_ns(ns, "await nat.drop_table()\nawait nat.drop_table()\nawait nat.remove_vm_nat('vm1')")
    assert ruleset(ns) == []


def test_nat_rejects_bad_input_without_touching_rules(ns: NetNS) -> None:
    in_ns(ns, "await nat.ensure_table()")
    before = ruleset(ns)
    names = in_ns(
        ns,
        """
        result = []
        for args in (("vm1", "300.1.1.1", None), ('vm"; flush ruleset', "10.0.0.2", None),
                     ("vm1", "10.0.0.2", "eth0 accept")):
            try:
                await nat.add_vm_nat(*args)
                result.append("accepted")
            except errors.InvalidArgument:
                result.append("InvalidArgument")
        """,
    )
    assert names == ["InvalidArgument"] * 3
    assert ruleset(ns) == before


def test_ip_forward_is_enabled_only_in_the_namespace(ns: NetNS) -> None:
    root_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    assert ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).out.strip() == "0"
    states = in_ns(
        ns, "before = nat.ip_forward_enabled()\nnat.enable_ip_forward()\nresult = [before, nat.ip_forward_enabled()]"
    )
    assert states == [False, True]
    assert ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).out.strip() == "1"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == root_before


def test_local_privileged_drives_the_same_operations(ns: NetNS) -> None:
    result = in_ns(
        ns,
        f"""
        from banger.host.privileged import local
        priv = local()
        await priv.ensure_bridge("{BRIDGE}", "172.30.0.1", 24)
        await priv.create_tap("bgt-00000002", "{BRIDGE}", None)
        await priv.add_vm_nat("vm9", "172.30.0.9", None)
        result = [await net.link_master("bgt-00000002"), nat.ip_forward_enabled(), sorted(await nat.list_vm_nat())]
        await priv.remove_vm_nat("vm9")
        await priv.delete_tap("bgt-00000002")
        await priv.remove_bridge("{BRIDGE}")
        result.append(await nat.list_vm_nat())
        result.append(await net.list_links("bgt"))
        try:
            await priv.set_resolved_link_dns("{BRIDGE}", "172.30.0.1; rm", "vm")
        except errors.InvalidArgument as exc:
            result.append(type(exc).__name__)
        """,
    )
    assert result == [BRIDGE, True, ["vm9"], {}, [], "InvalidArgument"]


def test_tap_filter_add_replace_remove_and_nat_matches_the_taps_mark(ns: NetNS) -> None:
    in_ns(ns, "await nat.ensure_table()")
    listed = in_ns(
        ns,
        """
        from banger.host import tapfilter
        from banger.host.privileged import local
        priv = local()
        for _ in range(2):  # the second replaces, it does not duplicate
            await priv.add_tap_filter("vm1", "bgt-00000001", "02:00:ac:1e:00:02", "172.30.0.2")
        await priv.add_vm_nat("vm1", "172.30.0.2", None)
        result = {"filters": {k: len(v) for k, v in (await tapfilter.list_filters()).items()},
                  "ids": await priv.tap_filter_vm_ids(), "nat": await priv.nat_vm_ids()}
        """,
    )
    assert listed == {"filters": {"vm1": 6}, "ids": ["vm1"], "nat": ["vm1"]}
    bridge = ns.run(["nft", "list", "table", "bridge", "banger"]).out
    for rule in ('iifname "bgt-00000001" ether saddr != 02:00:ac:1e:00:02 drop',
                 'iifname "bgt-00000001" arp saddr ip != 172.30.0.2 drop',
                 'iifname "bgt-00000001" ip saddr != 172.30.0.2 drop',
                 'iifname "bgt-00000001" meta mark set 0xac1e0002'):
        assert rule in bridge, bridge
    inet = ns.run(["nft", "list", "table", "inet", "banger"]).out
    assert "ip saddr 172.30.0.2 meta mark 0xac1e0002 masquerade" in inet, inet
    left = in_ns(
        ns,
        """
        from banger.host import tapfilter
        from banger.host.privileged import local
        for _ in range(2):
            await local().remove_tap_filter("vm1")
        result = await tapfilter.list_filters()
        """,
    )
    assert left == {}
    with pytest.raises(HostError, match="not a valid network interface name"):  # refused before nft sees it
        in_ns(ns, "from banger.host import tapfilter\nawait tapfilter.add_filter('vm1', 'eth0; x', "
                  "'02:00:00:00:00:01', '172.30.0.2')")
