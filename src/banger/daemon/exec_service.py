"""ExecService: commands run in a guest through its agent, the fast path of `vm run -- CMD` and `vm exec`.

The daemon holds one :class:`~banger.guest.agent.AgentLink` per running VM (QEMU's chardev takes one
client; Firecracker's vsock would take more, one is enough) and multiplexes every command over it. A CLI
starts a command (``vm.exec.start``), long-polls its output (``vm.exec.read``: returns as soon as there
is any, or the exit status), feeds its stdin (``vm.exec.write``, acknowledged by the guest, so a fast
writer waits for a slow reader) and signals it (``vm.exec.signal``). Output is kept until read, bounded
per command; a command nobody reads for ``IDLE_KILL`` seconds is killed, so a vanished CLI leaves
nothing running. A VM whose image has no agent is remembered for that boot and the CLI uses SSH; the
first contact with a young boot of an image that has one waits for it (up to ``AGENT_GRACE`` seconds
after launch), since sshd can answer before systemd has started the agent.

Locks: ``link_lock`` (one per VM id), a leaf lock held while a link is opened (for a young boot, while
its agent is waited for: later callers then see the outcome instead of probing again).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from banger import api
from banger.daemon.locks import KeyedLock
from banger.daemon.vm_handles import Handles
from banger.errors import NO_AGENT, Conflict, GuestError, NotFound, to_rpc_error
from banger.guest.agent import AgentLink, AgentProcess, AgentResult
from banger.host.vmm import VMM

log = logging.getLogger("banger.daemon.exec")

MAX_SESSIONS = 64  # per VM
MAX_UNREAD = 16 << 20  # output a command may have waiting for its reader before it is killed
IDLE_KILL = 60.0  # seconds without a read before a command is given up
AGENT_GRACE = 60.0  # seconds after launch the first contact with a boot's agent may wait for it to start
# The guest runs the command with bash when it has it (as sshd would: root's shell), else sh.
SHELL = ('if [ -x /bin/bash ]; then exec /bin/bash -c "$1"; fi; exec /bin/sh -c "$1"',)


@dataclass
class Session:
    id: str
    vm_id: str
    proc: AgentProcess | None = None
    events: list[tuple[str, bytes]] = field(default_factory=list)
    unread: int = 0
    status: int | None = None
    error: api.ErrorInfo | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_read: float = field(default_factory=time.monotonic)
    overflowed: bool = False  # MAX_UNREAD was reached and the command killed

    def add(self, stream: str, data: bytes) -> bool:
        """Keep ``data`` for the reader; False (and nothing kept) once MAX_UNREAD is waiting unread."""
        if self.unread + len(data) > MAX_UNREAD:
            return False
        self.events.append((stream, data))
        self.unread += len(data)
        self.changed.set()
        return True

    @property
    def finished(self) -> bool:
        return self.status is not None or self.error is not None


class ExecService:
    def __init__(self, running: dict[str, Handles], driver: Callable[[str], VMM]):
        self.running = running  # the lifecycle's watch list: vm id -> handles of running VMs
        self.driver = driver
        self.links: dict[str, tuple[float, AgentLink]] = {}  # vm id -> (boot's started_at, link)
        self.no_agent: set[tuple[str, float]] = set()  # (vm id, started_at) of boots without an agent
        self.seen: set[tuple[str, float]] = set()  # (vm id, started_at) of boots whose agent has answered
        self.sessions: dict[str, Session] = {}
        self.link_lock = KeyedLock("agent-link")
        self._reaper: asyncio.Task[None] | None = None

    async def _link(self, vm_id: str, name: str) -> AgentLink:
        handles = self.running.get(vm_id)
        if handles is None:
            raise Conflict(f"VM {name!r} is not running", hint=f"`banger vm start {name}` first")
        boot = handles.vmm.started_at
        if (vm_id, boot) in self.no_agent:
            raise GuestError(f"VM {name!r} has no guest agent", data={"reason": NO_AGENT})
        async with self.link_lock.hold(vm_id):
            if (vm_id, boot) in self.no_agent:  # found out by the caller this one waited for
                raise GuestError(f"VM {name!r} has no guest agent", data={"reason": NO_AGENT})
            known = self.links.get(vm_id)
            if known is not None and known[0] == boot and known[1].alive:
                # QEMU keeps the socket up when only the guest's agent went away: ask it, cheaply. A link
                # with commands running is kept whatever (closing it would kill them; a loaded guest
                # under emulation can be slow to answer).
                if any(s.vm_id == vm_id and not s.finished for s in self.sessions.values()):
                    return known[1]
                try:
                    await known[1].ping(within=5.0)
                    return known[1]
                except Exception:
                    log.info("the guest agent stopped answering; reconnecting", extra={"vm": name})
            if known is not None:
                await known[1].close()
                self.links.pop(vm_id, None)
            link = await self._first_contact(handles, vm_id, name)
            self.links[vm_id] = (boot, link)
            return link

    async def _first_contact(self, handles: Handles, vm_id: str, name: str) -> AgentLink:
        """A link to the boot's agent. Until it has answered once, a young boot of an image that carries the
        agent (sshd can answer before systemd has started it, and an emulated guest is slow) gets until
        AGENT_GRACE seconds after launch; otherwise an agent that does not answer within a few seconds is
        taken to be absent for the rest of the boot (the caller then uses SSH)."""
        handle = handles.vmm
        socket, vsock = self.driver(handle.runtime).agent_socket(handle)
        key = (vm_id, handle.started_at)
        young = handle.started_at + AGENT_GRACE - time.time() if handles.agent and key not in self.seen else 0.0
        deadline = time.monotonic() + min(AGENT_GRACE, max(3.0, young))
        while True:
            if self.running.get(vm_id) is not handles:
                raise Conflict(f"VM {name!r} stopped while banger waited for its guest agent")
            link: AgentLink | None = None
            try:
                link = await AgentLink.open(socket, vsock=vsock, within=2.0)
                await link.ping(within=min(3.0, max(0.5, deadline - time.monotonic())))
                self.seen.add(key)
                return link
            except Exception as exc:
                if link is not None:
                    await link.close()
                if time.monotonic() >= deadline:
                    self.no_agent.add(key)
                    raise GuestError(f"VM {name!r} has no guest agent answering ({exc})",
                                     data={"reason": NO_AGENT}) from exc
                await asyncio.sleep(0.5)

    async def start(self, vm_id: str, name: str, req: api.ExecStart) -> api.ExecStarted:
        if sum(1 for s in self.sessions.values() if s.vm_id == vm_id) >= MAX_SESSIONS:
            raise Conflict(f"VM {name!r} already runs {MAX_SESSIONS} commands through banger",
                           hint="wait for some to finish")
        link = await self._link(vm_id, name)
        session = Session(secrets.token_hex(8), vm_id)

        def sink(stream: str) -> Callable[[bytes], None]:
            def put(data: bytes) -> None:
                if not session.add(stream, data) and not session.overflowed and session.proc is not None:
                    session.overflowed = True  # its reader is not keeping up: end it, once
                    asyncio.get_running_loop().create_task(session.proc.signal(9))
            return put

        session.proc = await link.spawn(["/bin/sh", "-c", *SHELL, "banger", req.command],
                                        cwd=req.workdir or "/root", env=req.env, on_stdout=sink("stdout"),
                                        on_stderr=sink("stderr"), limit=0)
        self.sessions[session.id] = session
        asyncio.get_running_loop().create_task(self._finish(session))
        self._ensure_reaper()
        return api.ExecStarted(id=session.id)

    async def run(self, vm_id: str, name: str, script: str, *, on_stdout: Callable[[bytes], None],
                  timeout: float) -> AgentResult:
        """Run a script of banger's own in the guest (as root, in /root) and wait for it; GuestError with
        data reason ``no-agent`` when the VM has none (the caller uses SSH)."""
        link = await self._link(vm_id, name)
        return await link.exec(["/bin/sh", "-c", script], cwd="/root", on_stdout=on_stdout, limit=64 << 10,
                               timeout=timeout)

    async def _finish(self, session: Session) -> None:
        assert session.proc is not None
        try:
            session.status = (await session.proc.wait()).status
        except Exception as exc:
            session.error = api.ErrorInfo.model_validate(to_rpc_error(exc))
        finally:
            session.proc.forget()
            session.changed.set()

    def _session(self, exec_id: str) -> Session:
        session = self.sessions.get(exec_id)
        if session is None:
            raise NotFound(f"no running command {exec_id!r}", hint="it finished and was read, or was given up")
        return session

    async def read(self, req: api.ExecRead) -> api.ExecOutput:
        """Output events from ``req.offset`` on; waits up to ``req.wait`` seconds for some (or the end)."""
        session = self._session(req.id)
        session.last_read = time.monotonic()
        if req.offset >= len(session.events) and not session.finished:
            session.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.changed.wait(), req.wait)
        session.last_read = time.monotonic()
        events = session.events[req.offset:]
        # What was read can go: keep only the count, so a long command's output is not held twice.
        for i in range(req.offset, len(session.events)):
            session.unread -= len(session.events[i][1])
            session.events[i] = (session.events[i][0], b"")
        done = session.finished and req.offset + len(events) >= len(session.events)
        if done:
            self.sessions.pop(session.id, None)
        return api.ExecOutput(
            events=[api.ExecEvent(stream=s, data=base64.b64encode(d).decode()) for s, d in events],  # type: ignore[arg-type]
            offset=req.offset + len(events), done=done, status=session.status if done else None,
            error=session.error if done else None,
        )

    async def write(self, req: api.ExecWrite) -> api.Ok:
        session = self._session(req.id)
        if session.proc is not None:
            if req.data:
                await session.proc.write(base64.b64decode(req.data))
            if req.eof:
                await session.proc.close_stdin()
        return api.Ok()

    async def signal(self, req: api.ExecSignal) -> api.Ok:
        session = self._session(req.id)
        if session.proc is not None:
            await session.proc.signal(req.signal)
        return api.Ok()

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="exec-reaper")

    async def _reap(self) -> None:
        """Give up commands nobody reads (their CLI went away): kill them and drop what they printed."""
        while self.sessions:
            await asyncio.sleep(5)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if now - session.last_read > IDLE_KILL:
                    log.info("giving up an unread command", extra={"exec": session.id, "vm": session.vm_id})
                    if session.proc is not None and not session.finished:
                        with contextlib.suppress(Exception):
                            await session.proc.signal(9)
                    self.sessions.pop(session.id, None)

    async def forget_vm(self, vm_id: str) -> None:
        """Close a stopped VM's link (its commands end with it) and forget what its boots said."""
        self.no_agent = {k for k in self.no_agent if k[0] != vm_id}
        self.seen = {k for k in self.seen if k[0] != vm_id}
        known = self.links.pop(vm_id, None)
        if known is not None:
            await known[1].close()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for vm_id in list(self.links):
            await self.forget_vm(vm_id)
