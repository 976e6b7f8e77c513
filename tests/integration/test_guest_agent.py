"""banger-agent's protocol, driven for real: the static binary compiled from the shipped source, run on
the host over one end of a socketpair, and banger's own AgentLink on the other (no VM needed for the
frame handling, exec, streaming, backpressure and cleanup; the VM tests cover the virtio-serial link)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from banger.errors import GuestError, OperationTimeout
from banger.guest import agent


async def _gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        await asyncio.sleep(0.05)
    return False



class Running:
    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket):
        self.proc = proc
        self.sock = sock


@pytest.fixture
def running(agent_binary: Path) -> Iterator[Running]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([str(agent_binary), "--fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                            stderr=subprocess.PIPE)
    theirs.close()
    yield Running(proc, ours)
    proc.kill()
    proc.wait()


@pytest.fixture
async def link(running: Running) -> AsyncIterator[agent.AgentLink]:
    link = await agent.AgentLink.over(running.sock)
    yield link
    await link.close()


async def test_ping_exec_status_and_separate_streams(link: agent.AgentLink, tmp_path: Path) -> None:
    assert (await link.ping()).startswith("banger-agent ")
    result = await link.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.status, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    result = await link.exec(["sh", "-c", "pwd; echo $HOME $FOO"], cwd=str(tmp_path), env={"FOO": "a b"})
    assert result.stdout == f"{tmp_path}\n/root a b\n".encode()
    killed = await link.exec(["sh", "-c", "kill -9 $$"])
    assert killed.status == 128 + 9


async def test_missing_command_and_directory_are_shell_statuses(link: agent.AgentLink) -> None:
    missing = await link.exec(["/nonexistent/tool"])
    assert missing.status == 127 and b"cannot run /nonexistent/tool" in missing.stderr
    nodir = await link.exec(["true"], cwd="/nonexistent-dir")
    assert nodir.status == 126 and b"cannot cd" in nodir.stderr


async def test_stdin_is_streamed_with_backpressure(link: agent.AgentLink) -> None:
    data = os.urandom(3 << 20)  # 12 STDIN frames, each acknowledged before the next
    result = await link.exec(["sha256sum"], stdin=data)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # A command that never reads its input still finishes; the agent drops what it cannot deliver.
    assert (await link.exec(["true"], stdin=data)).status == 0


async def test_output_streams_as_written_and_is_capped(link: agent.AgentLink) -> None:
    seen: list[tuple[float, bytes]] = []
    started = time.monotonic()
    result = await link.exec(["sh", "-c", "echo first; sleep 1; echo second"],
                             on_stdout=lambda b: seen.append((time.monotonic() - started, b)))
    assert result.stdout == b"first\nsecond\n"
    assert seen[0][1] == b"first\n" and seen[0][0] < 0.8  # before the command ended
    big = await link.exec(["head", "-c", str(5 << 20), "/dev/zero"], limit=1 << 20)
    assert len(big.stdout) == 1 << 20 and big.truncated


async def test_commands_run_concurrently_on_one_link(link: agent.AgentLink) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(link.exec(["sh", "-c", f"sleep 1; echo {i}"]) for i in range(8)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]
    assert time.monotonic() - started < 4


async def test_timeout_kills_the_whole_process_group(link: agent.AgentLink, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    with pytest.raises(OperationTimeout):
        await link.exec(["sh", "-c", f"sleep 60 & echo $! > {marker}; wait"], timeout=1)
    assert await _gone(int(marker.read_text())), "the command's background child outlived the timeout"


async def test_closing_the_link_kills_what_it_started(running: Running, tmp_path: Path) -> None:
    link = await agent.AgentLink.over(running.sock)
    marker = tmp_path / "pid"
    task = asyncio.create_task(link.exec(["sh", "-c", f"echo $$ > {marker}; exec sleep 60"]))
    for _ in range(50):
        if marker.exists() and marker.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(marker.read_text())
    await link.close()
    task.cancel()
    running.proc.wait(timeout=5)  # --fd mode: the agent exits with its one connection
    assert await _gone(pid), "a command outlived the link that started it"


async def test_hostile_frames_end_the_link_not_the_agent_memory(running: Running) -> None:
    # A frame claiming 2 GiB: the agent drops the link instead of buffering it.
    running.sock.sendall(struct.pack(">IIB", 2 << 30, 1, agent.EXEC))
    running.proc.wait(timeout=5)
    assert b"oversized frame" in running.proc.stderr.read()  # type: ignore[union-attr]


async def test_malformed_exec_and_unknown_kinds_are_refused(link: agent.AgentLink) -> None:
    with pytest.raises(GuestError, match="unknown frame kind"):
        await link._call(99)
    with pytest.raises(GuestError, match="malformed EXEC"):
        await link._call(agent.EXEC, b"no-terminator")
    with pytest.raises(GuestError, match="SETTIME takes 8 bytes"):
        await link._call(agent.SETTIME, b"123")
    assert (await link.exec(["true"])).status == 0  # the link survives all of them


async def test_a_caller_that_gives_up_kills_the_command(link: agent.AgentLink, tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def refuse(data: bytes) -> None:
        raise GuestError("output refused")

    with pytest.raises(GuestError, match="output refused"):
        await link.exec(["sh", "-c", f"echo $$ > {marker}; while :; do echo x; sleep 0.1; done"], on_stdout=refuse)
    assert await _gone(int(marker.read_text())), "the command kept running after its caller gave up"
    assert (await link.exec(["true"])).status == 0


async def test_a_command_that_never_stops_printing_can_still_be_stopped(link: agent.AgentLink) -> None:
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        await link.exec(["yes"], timeout=1, limit=1 << 16)
    assert time.monotonic() - started < 10, "the kill did not get through while output streamed"
    assert (await link.ping()).startswith("banger-agent ")


async def _lossy_relay(agent_side: socket.socket,
                       drop_pings: int) -> tuple[agent.AgentLink, list[int], asyncio.Task[None]]:
    """An AgentLink to the real agent through a relay that loses the first ``drop_pings`` PING frames,
    the way a clone's port can lose one right after a restore (that loss itself cannot be provoked at
    will, so the relay stands in for it); the list counts the pings the relay saw."""
    ours, relay_side = socket.socketpair()
    seen: list[int] = []

    async def relay() -> None:
        a_r, a_w = await asyncio.open_connection(sock=relay_side)
        g_r, g_w = await asyncio.open_connection(sock=agent_side)

        async def to_agent() -> None:
            while True:
                head = await a_r.readexactly(9)
                length, _chan, kind = struct.unpack(">IIB", head)
                body = await a_r.readexactly(length)
                if kind == agent.PING:
                    seen.append(1)
                    if len(seen) <= drop_pings:
                        continue
                g_w.write(head + body)
                await g_w.drain()

        async def to_host() -> None:
            while data := await g_r.read(65536):
                a_w.write(data)
                await a_w.drain()

        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await asyncio.gather(to_agent(), to_host())

    task = asyncio.create_task(relay())
    return await agent.AgentLink.over(ours), seen, task


async def test_a_lost_ping_is_sent_again(running: Running) -> None:
    link, seen, relay = await _lossy_relay(running.sock, drop_pings=2)
    try:
        with pytest.raises(OperationTimeout):  # one ping, no retry: the loss is felt
            await link.ping(within=0.5)
        assert (await link.ping(within=5, every=0.3)).startswith("banger-agent ")
        assert len(seen) == 3  # the second ping was lost too and the third was answered
    finally:
        await link.close()
        relay.cancel()


async def test_pings_that_are_never_answered_time_out_naming_the_retries(running: Running) -> None:
    link, seen, relay = await _lossy_relay(running.sock, drop_pings=1000)
    try:
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match="pinged every 0.2s"):
            await link.ping(within=1.0, every=0.2)
        assert 0.9 < time.monotonic() - started < 3
        assert len(seen) >= 4
    finally:
        await link.close()
        relay.cancel()
