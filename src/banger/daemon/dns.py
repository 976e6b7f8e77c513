"""The daemon's DNS server for the ``.vm`` zone: ``<name>.vm`` A records for running VMs (UDP and TCP).

Answers are authoritative with TTL 0 (a name may move to another address when a VM is recreated).
A known name asked for another type (AAAA, MX, ...) gets an empty NOERROR answer, so resolvers asking
for A and AAAA together still get the A record; unknown ``.vm`` names get NXDOMAIN; other zones REFUSED.
Any local user can reach the port, so TCP is bounded: MAX_TCP_CONNECTIONS at once (extra ones are reset
without a log line), one deadline per query and per reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import struct
from collections.abc import Callable

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSError, DNSLabel, DNSRecord

from banger.errors import HostError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 42069
ZONE = "vm"
# A query (its length prefix and body) or the write of its reply must finish within this long.
_TCP_IDLE = 10.0
# Our answers fit in UDP; TCP is a resolver's fallback and needs a handful of connections. Each one holds a
# descriptor of the daemon (usually 1,024 in all), so a flood of them must not starve the RPC socket.
MAX_TCP_CONNECTIONS = 64

log = logging.getLogger(__name__)

Resolver = Callable[[str], str | None]


def vm_name(qname: str, zone: str = ZONE) -> str | None:
    """``dev`` for ``dev.vm.`` (any case); ``""`` for the zone apex; None outside the zone."""
    labels = [label.lower() for label in qname.rstrip(".").split(".")]
    if labels[-1:] != [zone]:
        return None
    return ".".join(labels[:-1])


def answer(query: bytes, resolve: Resolver, zone: str = ZONE) -> bytes | None:
    """The wire reply to the wire ``query``; None when it is not a DNS query at all (dropped)."""
    try:
        request = DNSRecord.parse(query)
    except (DNSError, struct.error, IndexError, ValueError):
        return None
    if request.header.qr or not request.questions:
        return None
    reply = request.reply(ra=0, aa=1)
    reply.header.ad = 0  # dig sets AD in queries and reply() copies it; nothing here is DNSSEC-validated
    if request.header.opcode != 0:
        reply.header.rcode = RCODE.NOTIMP
        return reply.pack()
    question = request.q
    name = vm_name(str(question.qname), zone)
    if name is None:
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
        return reply.pack()
    _fill(reply, name, question.qtype, resolve, zone)
    return reply.pack()


def _fill(reply: DNSRecord, name: str, qtype: int, resolve: Resolver, zone: str) -> None:
    try:
        ip = resolve(name) if name and "." not in name else None
    except Exception:  # a bug in the resolver must not kill the server; the client gets SERVFAIL
        log.exception("resolving %s.%s failed", name, zone)
        reply.header.rcode = RCODE.SERVFAIL
        return
    if ip is not None and qtype in (QTYPE.A, QTYPE.ANY):
        reply.add_answer(RR(reply.q.qname, QTYPE.A, rdata=A(ip), ttl=0))
        return
    if not name and qtype == QTYPE.SOA:
        reply.add_answer(_soa(zone))
        return
    if ip is None and name:
        reply.header.rcode = RCODE.NXDOMAIN
    reply.add_auth(_soa(zone))


def _soa(zone: str) -> RR:
    # Negative answers carry the zone's SOA so resolvers cache them only for its minimum (1 s).
    apex = DNSLabel(f"{zone}.")
    return RR(apex, QTYPE.SOA, ttl=1, rdata=SOA(f"ns.{zone}.", f"banger.{zone}.", (1, 60, 60, 60, 1)))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: VmDnsServer):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.server.resolve, self.server.zone)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class VmDnsServer:
    """Serves ``<name>.vm`` from ``resolve(name) -> ip | None`` on one address, over UDP and TCP."""

    def __init__(self, resolve: Resolver, *, zone: str = ZONE):
        self.resolve = resolve
        self.zone = zone
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_open = 0
        self.address: tuple[str, int] | None = None

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> tuple[str, int]:
        """Bind UDP and TCP on ``host:port`` (port 0 = any free port, same for both); the bound address."""
        # With port 0 the kernel picks a free UDP port, which a TCP socket may hold already (an outgoing
        # connection's ephemeral port): pick again rather than fail.
        for attempt in range(1 if port else 20):
            try:
                return await self._bind(host, port)
            except OSError as exc:
                await self.close()
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue
                raise HostError(
                    f"the .vm DNS server could not listen on {host}:{port}: {exc.strerror or exc}",
                    hint="another program holds that port; stop it, or stop the other bangerd",
                ) from exc
        raise AssertionError("unreachable")

    async def _bind(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
        bound = self._udp.get_extra_info("sockname")[:2]
        self._tcp = await asyncio.start_server(self._serve_tcp, bound[0], bound[1])
        self.address = (bound[0], int(bound[1]))
        return self.address

    async def close(self) -> None:
        """Stop answering; safe to call twice."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_open >= MAX_TCP_CONNECTIONS:
            writer.transport.abort()  # a reset, at once: the flood pays for it, not the log or the descriptors
            return
        self._tcp_open += 1
        try:
            await self._answer_tcp(reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # the client hung up, reset or stalled: nothing to log
        finally:
            self._tcp_open -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a peer that stopped reading would hold the descriptor forever
            else:
                writer.close()

    async def _answer_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(_TCP_IDLE):
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                query = await reader.readexactly(size)
            reply = answer(query, self.resolve, self.zone)
            if reply is None:
                return
            writer.write(struct.pack("!H", len(reply)) + reply)
            async with asyncio.timeout(_TCP_IDLE):
                await writer.drain()
