"""What a client can grow in bangerd is bounded: connections, requests in flight, frames, DNS TCP, the log.

Every test drives a real bangerd over its real Unix socket (or its DNS port on loopback) and checks the
owner is still answered within 2 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from banger.daemon import logs
from banger.daemon.server import MAX_CONNECTIONS, MAX_IN_FLIGHT
from banger.testing.daemon import Home

PING = b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping"}\n'
LOG_GROWTH_LIMIT = 200_000

# Runs as `nobody` with the system interpreter: opens up to COUNT TCP connections to HOST:PORT (for at most
# 20 s), prints how many, and holds them until its stdin closes.
FLOOD = r"""
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, deadline = [], time.monotonic() + 20
for _ in range(2 * count):
    if len(held) >= count or time.monotonic() > deadline:
        break
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        continue
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"""


def _conn(home: Home, timeout: float = 10) -> socket.socket:
    """A connection to bangerd; a full listen backlog (EAGAIN) is retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(str(home.layout.socket))
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _line(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """One reply line (b"" if the daemon closed first); bounded by ``limit`` bytes and the socket timeout."""
    out = bytearray()
    while len(out) < limit and not out.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _timed_ping(home: Home) -> float:
    """Seconds a fresh connection's ping takes (the answer is checked)."""
    start = time.monotonic()
    with _conn(home) as s:
        s.sendall(PING)
        reply = json.loads(_line(s))
    assert reply["result"]["pid"] == home.daemon_pid(), reply
    return time.monotonic() - start


def _log_size(home: Home) -> int:
    return sum(p.stat().st_size for p in home.layout.daemon_log.parent.glob(home.layout.daemon_log.name + "*"))


def _log_records(home: Home, offset: int = 0) -> list[dict]:
    """bangerd.log's complete lines from byte ``offset`` on (a line being written is left out)."""
    with home.layout.daemon_log.open("rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f if line.endswith(b"\n")]


def _cancelled(home: Home) -> int:
    return sum(r["msg"].startswith("request cancelled") for r in _log_records(home))


def _free_port() -> int:
    """A loopback port free for both UDP and TCP right now."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp, contextlib.suppress(OSError):
                tcp.bind(("127.0.0.1", port))
                return int(port)
    raise AssertionError("no free loopback port")


@pytest.fixture
def served(home: Home) -> Iterator[Home]:
    home.start_daemon()
    yield home


@pytest.fixture
def dns_home(home: Home) -> Iterator[tuple[Home, int]]:
    """A daemon whose .vm DNS server listens on a free loopback port, with the usual 1,024 descriptors."""
    port = _free_port()
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(f'dns_listen = "127.0.0.1:{port}"\n')
    pid = home.start_daemon()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (1024, 1024))
    yield home, port


@contextlib.contextmanager
def _flood_as_nobody(port: int, count: int) -> Iterator[int]:
    """Hold up to ``count`` TCP connections to 127.0.0.1:``port`` from uid 65534; yields how many opened."""
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", FLOOD,
         "127.0.0.1", str(port), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield int(proc.stdout.readline() or 0)  # the script prints within ~20 s, then waits for stdin
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- RPC socket ---------------------------------------------------------------------------------------


def test_pipelined_pings_then_hangup_leave_the_daemon_responsive(served: Home) -> None:
    burst = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"daemon.ping"}\n' % i for i in range(100_000))
    before = _log_size(served)
    with _conn(served, timeout=3) as s, contextlib.suppress(TimeoutError):
        s.sendall(burst)  # the daemon may stop reading before the end (backpressure): hang up anyway
    assert _timed_ping(served) < 2.0
    time.sleep(0.5)
    assert _cancelled(served) <= MAX_IN_FLIGHT, "only the requests in flight were left to cancel"
    grown = _log_size(served) - before
    assert grown < LOG_GROWTH_LIMIT, f"bangerd.log grew by {grown} bytes answering a client that left"
    assert _timed_ping(served) < 2.0


def test_in_flight_requests_are_capped_and_cancelled_on_hangup(home: Home, stalling_mirror: str) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(f'debian_mirror = "{stalling_mirror}"\n')
    home.start_daemon()
    with home.client() as c:
        op = c.kernel_pull("debian-6.1")  # stalls: every operation.wait on it stays in flight
    waits = MAX_IN_FLIGHT + 8
    with _conn(home) as s:
        s.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "operation.wait",
                                       "params": {"id": op.id, "timeout": 60}}).encode() + b"\n"
                           for i in range(waits)) + PING)
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):  # backpressure, not errors: the ping waits for a free slot
            s.recv(1)
    assert _timed_ping(home) < 2.0, "a full connection does not slow the others"

    deadline = time.monotonic() + 10
    while _cancelled(home) < MAX_IN_FLIGHT:
        assert time.monotonic() < deadline, "the hung-up client's requests were not cancelled"
        time.sleep(0.1)
    time.sleep(0.5)
    assert _cancelled(home) == MAX_IN_FLIGHT, f"{_cancelled(home)} requests ran at once on one connection"
    with home.client() as c:
        assert c.operation_cancel(op.id).state == "cancelled"


def test_connections_beyond_the_cap_are_refused_and_the_owner_recovers(served: Home) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(_conn(served))
            held[-1].sendall(PING)
            assert "result" in json.loads(_line(held[-1]))  # being served, so counted
        for _ in range(3):
            with _conn(served) as extra:
                reply = json.loads(_line(extra))
                assert reply["error"]["data"]["type"] == "DaemonUnavailable", reply
                assert "its limit" in reply["error"]["message"]
                assert _line(extra) == b"", "a refused connection is closed"
        cli = served.cli("daemon", "status", timeout=30)
        assert cli.returncode == 12 and "its limit" in cli.stderr, cli.stderr
        held[0].sendall(PING)  # the connections being served still are
        assert "result" in json.loads(_line(held[0]))

        held.pop().close()
        start = time.monotonic()
        while True:  # the daemon frees the slot as soon as it sees the hang-up
            with contextlib.suppress(KeyError, ValueError, OSError):  # refused: an error reply, or a reset
                _timed_ping(served)
                break
            assert time.monotonic() - start < 2.0, "the owner was not served within 2 s of a slot freeing"
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    fresh = [_conn(served) for _ in range(MAX_CONNECTIONS)]
    try:
        for s in fresh:
            s.sendall(PING)
        assert all("result" in json.loads(_line(s)) for s in fresh)
    finally:
        for s in fresh:
            s.close()
    served.cli("daemon", "status", check=True, timeout=30)


def test_half_sent_frame_is_dropped_after_the_timeout(home: Home) -> None:
    home.start_daemon("--frame-timeout", "1")
    with _conn(home) as idle, _conn(home) as stuck:
        start = time.monotonic()
        stuck.sendall(b'{"jsonrpc":"2.0","id":1,"meth')
        reply = json.loads(_line(stuck))
        elapsed = time.monotonic() - start
        assert reply["error"]["code"] == -32600 and "unfinished" in reply["error"]["message"], reply
        assert 0.8 < elapsed < 5.0, elapsed
        assert _line(stuck) == b"", "the connection is closed"
        idle.sendall(PING)  # a connection that sent nothing is not a half-sent frame: it stays
        assert json.loads(_line(idle))["result"]["pid"] == home.daemon_pid()
    assert _timed_ping(home) < 2.0


# --- DNS server ---------------------------------------------------------------------------------------


def _udp_query(port: int, name: str) -> DNSRecord:
    return DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=2))


def test_dns_tcp_flood_from_another_user_is_bounded(dns_home: tuple[Home, int]) -> None:
    home, port = dns_home
    before = _log_size(home)
    with _flood_as_nobody(port, 1100) as opened:
        assert opened > 1000, f"the flood opened only {opened} connections"
        assert _timed_ping(home) < 2.0
        assert _udp_query(port, "nope.vm").header.rcode == RCODE.NXDOMAIN
        time.sleep(1.5)  # long enough for asyncio to retry accept() a few times if it were failing
        assert _timed_ping(home) < 2.0
    grown = _log_size(home) - before
    assert grown < LOG_GROWTH_LIMIT, f"bangerd.log grew by {grown} bytes during the flood"
    start = time.monotonic()
    while (rcode := _tcp_rcode(port)) is None:  # TCP answers again once the daemon has seen the flood go
        assert time.monotonic() - start < 5.0, "DNS over TCP did not recover after the flood"
        time.sleep(0.1)
    assert rcode == RCODE.NXDOMAIN


def _tcp_rcode(port: int) -> int | None:
    """The rcode of a TCP query for nope.vm; None if the server reset or did not answer."""
    try:
        raw = DNSRecord.question("nope.vm").send("127.0.0.1", port, tcp=True, timeout=1)
    except (OSError, struct.error):
        return None
    return int(DNSRecord.parse(raw).header.rcode)


def test_accept_failures_are_logged_once_per_interval(dns_home: tuple[Home, int]) -> None:
    home, port = dns_home
    pid = home.daemon_pid()
    assert pid is not None
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 8, 1024))  # a few descriptors left, then EMFILE
    before = home.layout.daemon_log.stat().st_size
    try:
        with _flood_as_nobody(port, 100) as opened:
            assert opened > 50, f"the flood opened only {opened} connections"
            time.sleep(3)  # asyncio retries accept() every second, up to 100 failures each time
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (1024, 1024))
    failures = [r for r in _log_records(home, before) if "accept()" in r["msg"]]
    assert len(failures) == 1, f"{len(failures)} accept() failures logged"
    assert "exc" not in failures[0] and "Too many open files" in failures[0]["error"]
    start = time.monotonic()
    while True:
        with contextlib.suppress(OSError, KeyError, ValueError):
            _timed_ping(home)
            break
        assert time.monotonic() - start < 2.0, "the owner was not served within 2 s after the flood"
        time.sleep(0.05)


# --- bangerd.log --------------------------------------------------------------------------------------


def test_daemon_log_rotates_at_its_cap(tmp_path: Path) -> None:
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    saved = (root.handlers[:], root.level, aio.filters[:])
    try:
        logs.setup(tmp_path / "bangerd.log", "info", max_bytes=20_000, backups=2)
        for i in range(2_000):
            logging.getLogger("banger.test").info("line %d %s", i, "x" * 100)
        for handler in root.handlers:
            handler.flush()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bangerd.log", "bangerd.log.1", "bangerd.log.2"]
        assert all(p.stat().st_size <= 20_000 for p in tmp_path.iterdir())
        last = json.loads((tmp_path / "bangerd.log").read_text().splitlines()[-1])
        assert last["msg"].startswith("line 1999 ")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], aio.filters[:] = saved[0], saved[2]
        root.setLevel(saved[1])
