"""banger.guest.ports: parsing ``ss -H -tulpn`` output into listeners."""

from __future__ import annotations

import os
import socket

from banger.guest.ports import SS_COMMAND, Listener, parse_line, parse_ss
from banger.host.run import run

# Captured from a Debian bookworm guest (iproute2 6.1), trailing padding included.
SAMPLE = """\
udp   UNCONN 0      0          127.0.0.53%lo:53        0.0.0.0:*    users:(("systemd-resolve",pid=201,fd=13))
udp   UNCONN 0      0         [fe80::1]%eth0:546       [::]:*    users:(("dhclient",pid=300,fd=6))
tcp   LISTEN 0      128              0.0.0.0:22        0.0.0.0:*    users:(("sshd",pid=312,fd=3))    \n\
tcp   LISTEN 0      4096                [::]:22           [::]:*    users:(("sshd",pid=312,fd=4))
tcp LISTEN 0 511 127.0.0.1:5432 0.0.0.0:* users:(("postgres",pid=400,fd=5),("postgres",pid=401,fd=5))
tcp   LISTEN 0      511                    *:8080            *:*    users:(("node /srv/app.js",pid=500,fd=20))
tcp   LISTEN 0      511                    *:8080            *:*    users:(("node /srv/app.js",pid=500,fd=20))
tcp   LISTEN 0      128                [::1]:3000         [::]:*
garbage line
"""


def test_parse_sample() -> None:
    assert parse_ss(SAMPLE) == [
        Listener("tcp", "0.0.0.0", 22, "sshd"),
        Listener("tcp", "::", 22, "sshd"),
        Listener("udp", "127.0.0.53%lo", 53, "systemd-resolve"),
        Listener("udp", "fe80::1%eth0", 546, "dhclient"),
        Listener("tcp", "::1", 3000, ""),
        Listener("tcp", "127.0.0.1", 5432, "postgres"),
        Listener("tcp", "*", 8080, "node /srv/app.js"),
    ]


def test_endpoint_and_loopback() -> None:
    assert Listener("tcp", "0.0.0.0", 8080, "node").endpoint("dev") == "dev.vm:8080"
    assert Listener("tcp", "127.0.0.1", 5432, "pg").loopback_only
    assert Listener("udp", "127.0.0.53%lo", 53, "r").loopback_only
    assert Listener("tcp", "::1", 3000, "").loopback_only
    assert not Listener("tcp", "*", 80, "").loopback_only
    assert not Listener("tcp", "::", 22, "").loopback_only


def test_lines_that_are_not_listeners() -> None:
    assert parse_line("") is None
    assert parse_line("Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process") is None
    assert parse_line("u_str LISTEN 0 4096 /run/x.sock 123 * 0") is None
    assert parse_line("tcp LISTEN 0 128 0.0.0.0:* 0.0.0.0:*") is None


async def test_parse_real_ss_output() -> None:
    """The same command the guest runs, on this host, finds sockets this test opened."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("::1", 0))
        found = parse_ss((await run(SS_COMMAND.split())).out)
        me = (await run(["cat", f"/proc/{os.getpid()}/comm"])).out.strip()
        assert Listener("tcp", "127.0.0.1", tcp.getsockname()[1], me) in found
        assert Listener("udp", "::1", udp.getsockname()[1], me) in found
