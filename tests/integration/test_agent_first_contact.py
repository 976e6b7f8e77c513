"""The daemon's first contact with a boot's guest agent, against the real agent binary behind a Unix socket
that, like QEMU's chardev, accepts at once but has nobody answering until the guest's agent starts.

A young boot of an image with the agent waits for it; an image without one, an old boot, or a boot whose
agent answered before and then went away fall back to SSH within seconds; a VM stopped meanwhile ends
the wait."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from banger.daemon.exec_service import ExecService
from banger.daemon.vm_handles import Handles
from banger.errors import NO_AGENT, Conflict, GuestError
from banger.host.vmm import Handle


class Guest:
    """A listening socket whose connections get the real agent once ``boot_at`` has passed (before that
    they are held open unanswered, as QEMU holds them while the guest has not opened its port)."""

    def __init__(self, path: Path, binary: Path, agent_after: float | None):
        self.path, self.binary = path, binary
        self.agent_at = None if agent_after is None else time.monotonic() + agent_after
        self.held: list[socket.socket] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    async def serve(self) -> None:
        server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        async with server:
            await server.serve_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket").dup()
        writer.transport.abort()
        while self.agent_at is None or time.monotonic() < self.agent_at:
            if self.agent_at is None:
                self.held.append(sock)
                return
            await asyncio.sleep(0.1)
        self.procs.append(subprocess.Popen(  # noqa: ASYNC220  (a test stand-in for the guest; it starts at once)
            [str(self.binary), "--fd", str(sock.fileno())], pass_fds=(sock.fileno(),)))
        sock.close()

    def close(self) -> None:
        for s in self.held:
            s.close()
        for p in self.procs:
            p.kill()
            p.wait()


class Driver:
    def agent_socket(self, handle: Handle) -> tuple[Path, bool]:
        return handle.vm_dir / "agent.sock", False


def handles(tmp_path: Path, *, started_ago: float, agent: bool) -> Handles:
    vmm = Handle(runtime="qemu", pid=1, vm_dir=tmp_path, control_socket=tmp_path / "qmp.sock",
                 console_log=tmp_path / "console.log", started_at=time.time() - started_ago)
    return Handles(vmm, "bgt-tap", False, "tcg", agent)


@pytest.fixture
async def guest_factory(tmp_path: Path, agent_binary: Path) -> AsyncIterator:  # type: ignore[type-arg]
    made: list[tuple[Guest, asyncio.Task[None]]] = []

    def make(agent_after: float | None) -> Guest:
        guest = Guest(tmp_path / "agent.sock", agent_binary, agent_after)
        made.append((guest, asyncio.create_task(guest.serve())))
        return guest

    yield make
    for guest, task in made:
        task.cancel()
        guest.close()


async def _contact(service: ExecService) -> float:
    started = time.monotonic()
    link = await service._link("vm1", "dev")
    assert await link.ping(within=5)
    return time.monotonic() - started


async def test_a_young_boot_waits_for_its_agent(tmp_path: Path, guest_factory) -> None:  # type: ignore[no-untyped-def]
    guest_factory(agent_after=2.5)
    await asyncio.sleep(0.1)
    service = ExecService({"vm1": handles(tmp_path, started_ago=1, agent=True)}, lambda runtime: Driver())  # type: ignore[arg-type,return-value]
    try:
        waited = await _contact(service)
        assert 2.0 < waited < 10, waited
    finally:
        await service.close()


@pytest.mark.parametrize("started_ago, agent", [(1, False), (300, True)], ids=["image-without-agent", "old-boot"])
async def test_no_agent_falls_back_within_seconds(tmp_path: Path, guest_factory, started_ago: float,  # type: ignore[no-untyped-def]
                                                  agent: bool) -> None:
    guest_factory(agent_after=None)
    await asyncio.sleep(0.1)
    service = ExecService({"vm1": handles(tmp_path, started_ago=started_ago, agent=agent)}, lambda r: Driver())  # type: ignore[arg-type,return-value]
    try:
        started = time.monotonic()
        with pytest.raises(GuestError) as failed:
            await service._link("vm1", "dev")
        assert failed.value.data.get("reason") == NO_AGENT and time.monotonic() - started < 8
        started = time.monotonic()  # remembered for the boot: the next caller is told at once
        with pytest.raises(GuestError):
            await service._link("vm1", "dev")
        assert time.monotonic() - started < 0.5
    finally:
        await service.close()


async def test_a_vm_stopped_during_the_wait_ends_it(tmp_path: Path, guest_factory) -> None:  # type: ignore[no-untyped-def]
    guest_factory(agent_after=None)
    await asyncio.sleep(0.1)
    running = {"vm1": handles(tmp_path, started_ago=1, agent=True)}
    service = ExecService(running, lambda r: Driver())  # type: ignore[arg-type,return-value]
    try:
        waiting = asyncio.create_task(service._link("vm1", "dev"))
        await asyncio.sleep(1.5)
        running.pop("vm1")
        with pytest.raises(Conflict, match="stopped"):
            await asyncio.wait_for(waiting, 10)
    finally:
        await service.close()
