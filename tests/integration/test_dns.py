"""The ``.vm`` DNS server answering real UDP/TCP queries on loopback (dig + dnslib), and resolved routing."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from banger.daemon import dns
from banger.errors import HostError, InvalidArgument
from banger.host import resolved
from banger.host.run import run, which

VMS = {"dev": "172.30.0.5", "api-2": "172.30.0.9"}


def resolve(name: str) -> str | None:
    if name == "boom":
        raise RuntimeError("store unavailable")
    return VMS.get(name)


@pytest.fixture
async def server() -> AsyncIterator[dns.VmDnsServer]:
    srv = dns.VmDnsServer(resolve)
    await srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.close()


async def dig(server: dns.VmDnsServer, name: str, qtype: str = "A", *extra: str) -> str:
    assert server.address is not None
    host, port = server.address
    done = await run(["dig", f"@{host}", "-p", str(port), "+tries=1", "+time=2", *extra, name, qtype])
    return done.out


def query(server: dns.VmDnsServer, name: str, qtype: str = "A", *, tcp: bool = False) -> DNSRecord:
    assert server.address is not None
    raw = DNSRecord.question(name, qtype).send(server.address[0], server.address[1], tcp=tcp, timeout=2)
    return DNSRecord.parse(raw)


async def test_a_record_for_a_running_vm(server: dns.VmDnsServer) -> None:
    out = await dig(server, "dev.vm")
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    assert re.search(r"^dev\.vm\.\s+0\s+IN\s+A\s+172\.30\.0\.5$", out, re.M)
    assert " ad" not in out.split("flags:")[1].split(";")[0]
    assert "172.30.0.9" in await dig(server, "API-2.VM.", "A", "+short")


async def test_unknown_names_other_types_and_other_zones(server: dns.VmDnsServer) -> None:
    assert "status: NXDOMAIN" in await dig(server, "nope.vm")
    assert "status: NXDOMAIN" in await dig(server, "a.dev.vm")
    aaaa = await dig(server, "dev.vm", "AAAA")
    assert "status: NOERROR" in aaaa and "ANSWER: 0" in aaaa and "SOA" in aaaa
    assert "status: REFUSED" in await dig(server, "example.com")
    assert "status: SERVFAIL" in await dig(server, "boom.vm")
    soa = await asyncio.get_running_loop().run_in_executor(None, query, server, "vm", "SOA")
    assert soa.header.rcode == RCODE.NOERROR and soa.rr[0].rtype == QTYPE.SOA


async def test_tcp_and_dnslib_client(server: dns.VmDnsServer) -> None:
    loop = asyncio.get_running_loop()
    udp = await loop.run_in_executor(None, query, server, "dev.vm")
    tcp = await loop.run_in_executor(None, lambda: query(server, "api-2.vm", tcp=True))
    assert [str(r.rdata) for r in udp.rr] == ["172.30.0.5"]
    assert [str(r.rdata) for r in tcp.rr] == ["172.30.0.9"]
    assert "172.30.0.5" in await dig(server, "dev.vm", "A", "+tcp", "+short")


async def test_garbage_is_dropped_and_server_keeps_answering(server: dns.VmDnsServer) -> None:
    assert server.address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01garbage", server.address)
    assert dns.answer(b"\x00\x01garbage", resolve) is None
    assert "172.30.0.5" in await dig(server, "dev.vm", "A", "+short")


async def test_port_in_use_is_a_host_error(server: dns.VmDnsServer) -> None:
    assert server.address is not None
    other = dns.VmDnsServer(resolve)
    with pytest.raises(HostError, match=r"could not listen on 127\.0\.0\.1:\d+"):
        await other.start(*server.address)
    await other.close()
    await server.close()
    await server.close()  # twice is fine


async def _tcp_rcode(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> int:
    query = DNSRecord.question(name).pack()
    writer.write(struct.pack("!H", len(query)) + query)
    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
    return int(DNSRecord.parse(await asyncio.wait_for(reader.readexactly(size), 2)).header.rcode)


async def _reset_at_once(host: str, port: int) -> bool:
    """Whether a new TCP connection is closed by the server before it sends anything."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except ConnectionResetError:
        return True
    finally:
        writer.close()


async def test_tcp_connections_beyond_the_cap_are_reset(server: dns.VmDnsServer) -> None:
    assert server.address is not None
    host, port = server.address
    held = [await asyncio.open_connection(host, port) for _ in range(dns.MAX_TCP_CONNECTIONS)]
    try:
        assert await _tcp_rcode(*held[-1], "dev.vm") == RCODE.NOERROR  # all of them are being served
        for _ in range(3):
            assert await _reset_at_once(host, port), "a connection beyond the cap must be closed at once"
        assert await _tcp_rcode(*held[0], "nope.vm") == RCODE.NXDOMAIN  # the held ones still answer
        assert "172.30.0.5" in await dig(server, "dev.vm", "A", "+short")  # and UDP is untouched
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.2)  # the server sees the hang-ups
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await _tcp_rcode(reader, writer, "api-2.vm") == RCODE.NOERROR
    finally:
        writer.close()


def test_vm_name() -> None:
    assert dns.vm_name("Dev.VM.") == "dev"
    assert dns.vm_name("vm.") == ""
    assert dns.vm_name("dev.vm.example.") is None
    assert dns.vm_name("example.com") is None


# --- systemd-resolved routing (this host has no resolved; the commands are checked as built) --------


def test_resolved_not_available_here_says_why(tmp_path: Path) -> None:
    status = resolved.available()
    assert not status and ("not installed" in status.reason or "not running" in status.reason)
    (tmp_path / "stub-resolv.conf").touch()
    if which("resolvectl") is None:
        assert "resolvectl is not installed" in resolved.available(tmp_path / "stub-resolv.conf").reason


def test_resolved_command_lines() -> None:
    assert resolved.route_commands("banger0", "127.0.0.1:42069") == [
        ["resolvectl", "dns", "banger0", "127.0.0.1:42069"],
        ["resolvectl", "domain", "banger0", "~vm"],
        ["resolvectl", "dnssec", "banger0", "no"],
        ["resolvectl", "default-route", "banger0", "no"],
    ]
    assert resolved.route_commands("br0", "[::1]:53", "test")[1] == ["resolvectl", "domain", "br0", "~test"]
    assert resolved.unroute_command("banger0") == ["resolvectl", "revert", "banger0"]
    for bad in ("127.0.0.1; rm -rf /", "127.0.0.1:99999", "dns.example:53", ""):
        with pytest.raises(InvalidArgument):
            resolved.route_commands("banger0", bad)
    with pytest.raises(InvalidArgument):
        resolved.route_commands("banger0", "127.0.0.1", "~vm")
    with pytest.raises(InvalidArgument):
        resolved.route_commands("bad link", "127.0.0.1")


async def test_privileged_seam_validates_before_running() -> None:
    from banger.host.privileged import local

    with pytest.raises(InvalidArgument):
        await local().set_resolved_link_dns("banger0", "127.0.0.1:42069; reboot", "vm")
