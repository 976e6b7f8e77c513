"""The host side of banger-agent, the daemon's fast channel into a guest (``images/files/banger-agent.c``).

One :class:`AgentLink` is one connection to one guest's agent: QEMU's virtio-serial chardev socket, or
Firecracker's vsock socket (``CONNECT 52``). Calls are multiplexed over it by channel number, so several
commands can run at once; a command's stdout and stderr arrive as they are written and its exit status
once both have ended. Closing the link kills every command it started (the agent does that).

The guest is hostile like everything else: frames are bounded, output is capped, and a guest that stops
answering is a timeout, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import GuestError, OperationTimeout

HEADER = struct.Struct(">IIB")
MAX_PAYLOAD = 1 << 20
STDIN_CHUNK = 256 << 10
VSOCK_PORT = 52  # banger-agent.c listens here under Firecracker
# How long a clone's first ping waits before it is sent again. A clone wakes with its template's guest
# state, which can include a virtio-serial event the guest had not handled when the template was paused;
# a ping that arrives around it has gone unanswered (once in several CI runs), and one more ping costs
# nothing. The agent also re-reads its port every half second (banger-agent.c) for the same reason.
REPING = 1.0

EXEC, STDIN, SIGNAL, SETTIME, RESEED, PING = 1, 2, 3, 4, 5, 6
STDOUT, STDERR, EXIT, ERROR, OK, ACK = 16, 17, 18, 19, 20, 21

OutputSink = Callable[[bytes], None]


@dataclass(frozen=True)
class AgentResult:
    """What one command did: its exit status (128 + N when killed by signal N) and captured output."""

    status: int
    stdout: bytes
    stderr: bytes
    truncated: bool = False


class _Channel:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()


class AgentLink:
    """A connection to one guest agent; use :meth:`open` (or :meth:`over`) and close it when done."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, what: str):
        self._reader = reader
        self._writer = writer
        self.what = what
        self._channels: dict[int, _Channel] = {}
        self._next = 1
        self._write_lock = asyncio.Lock()
        self._closed: BaseException | None = None
        self._pump = asyncio.create_task(self._read_frames())

    @classmethod
    async def open(cls, socket: Path, *, vsock: bool = False, within: float = 5.0) -> AgentLink:
        """Connect to the agent behind ``socket`` (QEMU chardev, or Firecracker's vsock UDS when ``vsock``)."""
        deadline = time.monotonic() + within
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket), limit=MAX_PAYLOAD)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise GuestError(f"could not reach the guest agent at {socket}: {exc}",
                                     hint="the VMM may have exited; see `banger vm logs`") from exc
                await asyncio.sleep(0.02)
        if vsock:
            writer.write(f"CONNECT {VSOCK_PORT}\n".encode())
            try:
                reply = await asyncio.wait_for(reader.readline(), within)
            except (TimeoutError, OSError, ValueError):  # ValueError: a line over the stream's limit
                reply = b""
            if not reply.startswith(b"OK "):
                writer.close()
                raise GuestError(f"the guest agent did not accept a vsock connection ({reply[:80]!r})",
                                 hint="the guest may still be booting, or its image has no banger-agent")
        return cls(reader, writer, str(socket))

    @classmethod
    async def over(cls, sock: object, what: str = "agent") -> AgentLink:
        """A link over an already connected stream socket (tests hand the agent one end of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_PAYLOAD)  # type: ignore[arg-type]
        return cls(reader, writer, what)

    @property
    def alive(self) -> bool:
        """True while the connection is up (the guest has not closed it and nobody closed it here)."""
        return self._closed is None and not self._pump.done()

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pump
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AgentLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- frames -------------------------------------------------------------------------------------

    async def _read_frames(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(HEADER.size)
                length, chan, kind = HEADER.unpack(head)
                if length > MAX_PAYLOAD:
                    raise GuestError(f"the guest agent sent an oversized frame ({length} bytes)")
                payload = await self._reader.readexactly(length) if length else b""
                channel = self._channels.get(chan)
                if channel is not None:
                    channel.frames.put_nowait((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._closed = GuestError(f"the guest agent at {self.what} closed the connection ({exc!r})")
        except GuestError as exc:
            self._closed = exc
        finally:
            self._closed = self._closed or GuestError(f"the link to the guest agent at {self.what} was closed")
            for channel in self._channels.values():
                channel.frames.put_nowait((-1, b""))

    async def _send(self, chan: int, kind: int, payload: bytes = b"") -> None:
        if self._closed is not None:
            raise self._closed
        async with self._write_lock:
            try:
                self._writer.write(HEADER.pack(len(payload), chan, kind) + payload)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise GuestError(f"the link to the guest agent at {self.what} broke: {exc}") from exc

    def _open_channel(self) -> tuple[int, _Channel]:
        chan = self._next
        self._next += 1
        channel = self._channels[chan] = _Channel()
        return chan, channel

    async def _next_frame(self, channel: _Channel) -> tuple[int, bytes]:
        kind, payload = await channel.frames.get()
        if kind == -1:
            raise self._closed or GuestError("the guest agent link closed")
        return kind, payload

    async def _call(self, kind: int, payload: bytes = b"", within: float = 10.0) -> str:
        chan, channel = self._open_channel()
        try:
            await self._send(chan, kind, payload)
            reply, text = await asyncio.wait_for(self._next_frame(channel), within)
        except TimeoutError as exc:
            raise OperationTimeout(f"the guest agent at {self.what} did not answer within {within:g}s") from exc
        finally:
            self._channels.pop(chan, None)
        if reply == ERROR:
            raise GuestError(f"the guest agent refused: {text.decode(errors='replace')[:300]}")
        return text.decode(errors="replace")

    # --- calls --------------------------------------------------------------------------------------

    async def ping(self, within: float = 10.0, *, every: float | None = None) -> str:
        """The agent's version line, once it answers; with ``every``, a ping unanswered after that many
        seconds is sent again (a clone just restored from a snapshot may drop the first one, see
        :data:`REPING`) until ``within`` is over."""
        if every is None:
            return await self._call(PING, within=within)
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._call(PING, within=max(0.05, min(every, left)))
            except OperationTimeout:
                if time.monotonic() >= deadline:
                    raise OperationTimeout(f"the guest agent at {self.what} did not answer within {within:g}s "
                                           f"(pinged every {every:g}s)") from None

    async def set_time(self, ns: int | None = None) -> None:
        """Set the guest's wall clock (to the host's now by default)."""
        await self._call(SETTIME, struct.pack(">Q", time.time_ns() if ns is None else ns))

    async def reseed(self, data: bytes | None = None) -> None:
        """Mix fresh host entropy into the guest kernel's RNG and force a reseed of its CRNG."""
        await self._call(RESEED, os.urandom(64) if data is None else data)

    async def spawn(self, argv: Sequence[str], *, cwd: str = "", env: Mapping[str, str] | None = None,
                    on_stdout: OutputSink | None = None, on_stderr: OutputSink | None = None,
                    limit: int = 16 << 20) -> AgentProcess:
        """Start ``argv`` in the guest (as root, in its own session); feed and await it through the result."""
        if not argv:
            raise ValueError("exec needs a command")
        env_items = [f"{k}={v}" for k, v in (env or {}).items()]
        fields = [cwd, str(len(env_items)), *env_items, *argv]
        if any("\0" in f for f in fields):
            raise GuestError("a command argument, directory or environment value holds a NUL byte")
        payload = b"".join(f.encode() + b"\0" for f in fields)
        if len(payload) > MAX_PAYLOAD:
            raise GuestError("the command line is longer than the agent accepts (1 MiB)")
        chan, channel = self._open_channel()
        try:
            await self._send(chan, EXEC, payload)
        except BaseException:
            self._channels.pop(chan, None)
            raise
        return AgentProcess(self, chan, channel, on_stdout, on_stderr, limit)

    async def exec(self, argv: Sequence[str], *, cwd: str = "", env: Mapping[str, str] | None = None,
                   stdin: bytes | None = None, on_stdout: OutputSink | None = None,
                   on_stderr: OutputSink | None = None, limit: int = 16 << 20,
                   timeout: float | None = None) -> AgentResult:
        """Run ``argv`` in the guest and return its status and output.

        Output is captured up to ``limit`` bytes per stream (``truncated`` says when more came) and also
        handed to ``on_stdout``/``on_stderr`` as it arrives. ``timeout`` kills the command's process group.
        """
        proc = await self.spawn(argv, cwd=cwd, env=env, on_stdout=on_stdout, on_stderr=on_stderr, limit=limit)
        try:
            async def run() -> AgentResult:
                if stdin:
                    await proc.write(stdin)
                await proc.close_stdin()
                return await proc.wait()

            try:
                return await asyncio.wait_for(run(), timeout)
            except TimeoutError as exc:
                with contextlib.suppress(GuestError):
                    await proc.signal(9)
                raise OperationTimeout(f"{argv[0]!r} in the guest did not finish within {timeout:g}s",
                                       hint="it was killed; pass a longer timeout") from exc
            except BaseException:
                # Given up here (a sink refused its output, the caller was cancelled): end it there too.
                with contextlib.suppress(GuestError, OSError, ConnectionError):
                    await proc.signal(9)
                raise
        finally:
            proc.forget()


class AgentProcess:
    """One command running in the guest: write its stdin, signal it, wait for its result."""

    def __init__(self, link: AgentLink, chan: int, channel: _Channel, on_stdout: OutputSink | None,
                 on_stderr: OutputSink | None, limit: int):
        self._link = link
        self._chan = chan
        self._channel = channel
        self._sinks = {STDOUT: on_stdout, STDERR: on_stderr}
        self._bufs = {STDOUT: bytearray(), STDERR: bytearray()}
        self._limit = limit
        self._truncated = False
        self._exited = False  # the agent reported the exit (done can also mean given up here)
        self._acks: asyncio.Queue[None] = asyncio.Queue()
        self._result: asyncio.Future[AgentResult] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                kind, payload = await self._link._next_frame(self._channel)
                if kind == ACK:
                    self._acks.put_nowait(None)
                elif kind in (STDOUT, STDERR):
                    sink, buf = self._sinks[kind], self._bufs[kind]
                    if sink is not None:
                        sink(payload)
                    room = self._limit - len(buf)
                    self._truncated = self._truncated or len(payload) > room
                    buf += payload[:max(room, 0)]
                elif kind == EXIT:
                    self._exited = True
                    (raw,) = struct.unpack(">I", payload[:4].rjust(4, b"\0"))
                    self._result.set_result(AgentResult(decode_status(raw), bytes(self._bufs[STDOUT]),
                                                        bytes(self._bufs[STDERR]), self._truncated))
                    return
                elif kind == ERROR:
                    raise GuestError(f"the guest agent could not run the command: "
                                     f"{payload.decode(errors='replace')[:300]}")
        except BaseException as exc:
            if not self._result.done():
                self._result.set_exception(exc if isinstance(exc, Exception) else GuestError("exec cancelled"))
            if not isinstance(exc, Exception):
                raise

    @property
    def done(self) -> bool:
        return self._result.done()

    async def _until_ack(self) -> None:
        """Wait for the agent's ACK of one STDIN frame, or for the command to end (then input is moot)."""
        ack: asyncio.Future[Any] = asyncio.ensure_future(self._acks.get())
        waiters: set[asyncio.Future[Any]] = {ack, self._result}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ack.cancel()

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin, one acknowledged chunk at a time (backpressure)."""
        for i in range(0, len(data), STDIN_CHUNK):
            if self.done:
                return
            await self._link._send(self._chan, STDIN, data[i:i + STDIN_CHUNK])
            await self._until_ack()

    async def close_stdin(self) -> None:
        if not self.done:
            await self._link._send(self._chan, STDIN, b"")
            await self._until_ack()

    async def signal(self, signo: int) -> None:
        """Send ``signo`` to the command's process group (SIGKILL = 9), unless it has exited."""
        if not self._exited and self._link.alive:
            await self._link._send(self._chan, SIGNAL, bytes([signo]))

    async def wait(self) -> AgentResult:
        return await asyncio.shield(self._result)

    def forget(self) -> None:
        """Stop listening for this command's frames (after its result, or when giving up on it)."""
        self._link._channels.pop(self._chan, None)
        if not self._pump.done():
            self._pump.cancel()


def decode_status(raw: int) -> int:
    """A wait(2) status as a shell reports it: the exit code, or 128 + the signal that killed it."""
    if os.WIFEXITED(raw):
        return os.WEXITSTATUS(raw)
    if os.WIFSIGNALED(raw):
        return 128 + os.WTERMSIG(raw)
    return 255
