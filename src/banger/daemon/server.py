"""The Unix-socket JSON-RPC server: peer-uid check, framing, dispatch through the METHODS table.

Each connection reads frames in a loop and runs every request as its own task, so a slow call does not
block the next; when the client disconnects, its in-flight requests are cancelled. Nothing a client
sends can stop the server: bad frames get JSON-RPC errors and the loop goes on. What a client can grow
is capped: connections (beyond ``max_connections`` a new one gets one error line and is closed), requests
in flight per connection (beyond ``max_in_flight`` the server stops reading that connection until one
finishes), the size of a frame (``rpc.MAX_FRAME``) and the time a begun frame may take (``frame_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from banger import rpc
from banger.daemon.logs import Throttle
from banger.errors import BangerError, DaemonUnavailable, PermissionDenied, to_rpc_error

log = logging.getLogger("banger.daemon.server")

# The CLI holds one connection per command, so 128 is far more than a person or an agent runs at once,
# and far below the 1,024 descriptors a daemon usually gets: the cap keeps room for VMs, disks and DNS.
MAX_CONNECTIONS = 128
# Requests of one connection run concurrently up to this many; then the server reads no further frame
# until one finishes (backpressure, not errors), so a pipelining client cannot pile up tasks.
MAX_IN_FLIGHT = 32
# A local client writes a whole frame in milliseconds: one begun and unfinished after this long comes
# from a stuck or hostile client, which would otherwise hold a connection and a buffer forever.
FRAME_TIMEOUT = 30.0
# Frames are read this many bytes at a time, and the stream pauses the socket at twice this, so a
# connection the server is not reading (backpressure) buffers little.
READ_CHUNK = 256 << 10
# While a connection waits for a free request slot, this often the server checks whether its client hung up.
HANGUP_POLL = 0.25
# Closing flushes the last answer; a client that does not read it within this long is cut off.
CLOSE_GRACE = 1.0
# Refusals a flood can provoke are logged once per this many seconds, with a count of the ones held back.
REFUSAL_LOG_INTERVAL = 60.0


class FrameTooLarge(Exception):
    """A line exceeded rpc.MAX_FRAME; it has been consumed and discarded."""


class FrameTimeout(Exception):
    """A frame was begun but not finished within the frame timeout."""


class FrameReader:
    """Splits a stream into newline-terminated frames of at most ``max_frame`` bytes, each finished in time."""

    def __init__(self, reader: asyncio.StreamReader, *, max_frame: int = rpc.MAX_FRAME,
                 timeout: float = FRAME_TIMEOUT):
        self.reader = reader
        self.max_frame = max_frame
        self.timeout = timeout
        self._buf = bytearray()
        self._scanned = 0  # the first _scanned bytes of _buf hold no newline
        self._oversized = False  # discarding the rest of a line longer than max_frame

    async def next(self) -> bytes | None:
        """The next line without its newline; None at EOF (a trailing partial line counts as a frame)."""
        deadline: float | None = None
        while (line := self._take_line()) is None:
            if deadline is None and (self._buf or self._oversized):
                deadline = asyncio.get_running_loop().time() + self.timeout
            chunk = await self._read(deadline)
            if not chunk:
                return self._at_eof()
            self._buf += chunk
        return line

    def _take_line(self) -> bytes | None:
        newline = self._buf.find(b"\n", self._scanned)
        if newline < 0:
            self._scanned = len(self._buf)
            if self._scanned > self.max_frame:
                self._oversized, self._scanned = True, 0
                self._buf.clear()
            return None
        line = bytes(self._buf[:newline])
        del self._buf[: newline + 1]
        self._scanned = 0
        if self._oversized or len(line) > self.max_frame:
            self._oversized = False
            raise FrameTooLarge()
        return line

    def _at_eof(self) -> bytes | None:
        if self._oversized:
            self._oversized = False
            raise FrameTooLarge()
        line = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return line or None

    async def _read(self, deadline: float | None) -> bytes:
        if deadline is None:
            return await self.reader.read(READ_CHUNK)
        try:
            async with asyncio.timeout_at(deadline):
                return await self.reader.read(READ_CHUNK)
        except TimeoutError:
            raise FrameTimeout() from None


Dispatch = Callable[[str, dict[str, Any]], Awaitable[Any]]


# (uid, gid) of the client whose request is being handled, from SO_PEERCRED (see ``requesting_user``).
_PEER: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("banger_peer", default=None)


def peer_credentials(writer: asyncio.StreamWriter) -> tuple[int, int] | None:
    """The connecting process's (uid, gid) from SO_PEERCRED (None if the kernel will not say)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    return int(uid), int(gid)


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The connecting process's uid from SO_PEERCRED (None if the kernel will not say)."""
    creds = peer_credentials(writer)
    return None if creds is None else creds[0]


def requesting_user() -> tuple[int, int] | None:
    """(uid, gid) of the user whose request is being handled, when that is not the daemon's own user.

    Work done on that user's files (host git on their repository) runs as them; None means "as the daemon".
    """
    peer = _PEER.get()
    if peer is None or peer[0] == os.geteuid() or os.geteuid() != 0:
        return None
    return peer


def hung_up(writer: asyncio.StreamWriter) -> bool:
    """Whether the client closed its end (POLLHUP holds even while unread frames are still queued)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0))


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close, giving the last answer CLOSE_GRACE to flush; a client that does not read it is cut off."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # the client is gone either way; its reset says nothing new
        pass


class Server:
    """Serves one socket; ``dispatch(method, params)`` returns a JSON-able result or raises."""

    def __init__(self, path: Path, dispatch: Dispatch, *, owner_uid: int | None = None,
                 max_connections: int = MAX_CONNECTIONS, max_in_flight: int = MAX_IN_FLIGHT,
                 frame_timeout: float = FRAME_TIMEOUT):
        self.path = path
        self.dispatch = dispatch
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.frame_timeout = frame_timeout
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._serving = 0  # connections past the checks, the ones max_connections counts
        self._stranger_log = Throttle(REFUSAL_LOG_INTERVAL)
        self._full_log = Throttle(REFUSAL_LOG_INTERVAL)

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path), limit=READ_CHUNK)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _allowed(self, uid: int | None) -> bool:
        return uid is not None and (uid == self.owner_uid or uid == 0)

    def _refusal(self, uid: int | None) -> BangerError | None:
        """Why this connection may not be served (logged at most once per interval), or None."""
        if not self._allowed(uid):
            if (held := self._stranger_log.allow()) is not None:
                log.warning("refused connection", extra={"peer_uid": uid, "suppressed": held})
            return PermissionDenied(
                f"uid {uid} may not use this banger daemon (owner uid {self.owner_uid})",
                hint="run banger as the user who owns the daemon, or as root",
            )
        if self._serving >= self.max_connections:
            if (held := self._full_log.allow()) is not None:
                log.warning("refused connection: too many open", extra={"limit": self.max_connections,
                                                                        "suppressed": held})
            return DaemonUnavailable(
                f"bangerd already serves {self._serving} connections, its limit; this one was closed",
                hint="some program holds many banger connections open; stop it, or retry when it is done",
            )
        return None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            creds = peer_credentials(writer)
            refusal = self._refusal(None if creds is None else creds[0])
            _PEER.set(creds)  # every request task of this connection copies it
            if refusal is not None:
                writer.write(rpc.encode(rpc.error_response(None, to_rpc_error(refusal))))
                return
            self._serving += 1
            try:
                await _Connection(reader, writer, self.dispatch, max_in_flight=self.max_in_flight,
                                  frame_timeout=self.frame_timeout).serve()
            finally:
                self._serving -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            await close_writer(writer)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dispatch: Dispatch, *,
                 max_in_flight: int, frame_timeout: float):
        self.frames = FrameReader(reader, timeout=frame_timeout)
        self.writer = writer
        self.dispatch = dispatch
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(max_in_flight)
        self.write_lock = asyncio.Lock()

    async def serve(self) -> None:
        try:
            while (frame := await self._next_request()) is not None:
                if not await self._wait_slot():
                    return
                task = asyncio.create_task(self.handle(frame))
                self.tasks.add(task)
                task.add_done_callback(self._finished)
        finally:
            # The client went away: nobody will read these answers, so stop the work.
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _next_request(self) -> bytes | None:
        """The next non-blank frame; None at EOF or when a begun frame took too long (the connection ends)."""
        while True:
            try:
                frame = await self.frames.next()
            except FrameTooLarge:
                await self.send(rpc.error_response(None, rpc.invalid_request(
                    f"message larger than {rpc.MAX_FRAME} bytes; it was discarded")))
                continue
            except FrameTimeout:
                log.info("dropped a connection: a message stayed unfinished", extra={"timeout": self.frames.timeout})
                # No drain: a client this slow may not read either, and closing flushes what it can.
                self.writer.write(rpc.encode(rpc.error_response(None, rpc.invalid_request(
                    f"message unfinished after {self.frames.timeout:g}s; closing the connection"))))
                return None
            if frame is None or frame.strip():
                return frame

    async def _wait_slot(self) -> bool:
        """Take a request slot once one is free; False if the client hung up meanwhile."""
        if not self.slots.locked():
            await self.slots.acquire()  # free: returns at once, no timer needed
        else:
            while True:
                try:
                    async with asyncio.timeout(HANGUP_POLL):
                        await self.slots.acquire()
                    break
                except TimeoutError:
                    if hung_up(self.writer):
                        return False
        # Slots free up all at once when a write finds the client gone; frames still buffered are moot.
        return not self.writer.is_closing()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    async def send(self, message: dict[str, Any]) -> None:
        async with self.write_lock:
            if self.writer.is_closing():  # writing now would only make asyncio log a warning per answer
                raise ConnectionResetError("the client hung up")
            self.writer.write(rpc.encode(message))
            await self.writer.drain()

    async def handle(self, frame: bytes) -> None:
        """Decode, dispatch and answer one frame; a client that hung up meanwhile just gets no answer."""
        with contextlib.suppress(ConnectionError):
            reply = await self._reply(frame)
            if reply is not None:
                await self.send(reply)

    async def _reply(self, frame: bytes) -> dict[str, Any] | None:
        try:
            req_id, method, params, notification = rpc.decode_request(frame)
        except ValueError as exc:
            error, req_id = exc.args[0], (exc.args[1] if len(exc.args) > 1 else None)
            return rpc.error_response(req_id, error)
        try:
            result = await self.dispatch(method, params)
        except asyncio.CancelledError:
            log.info("request cancelled: the client disconnected", extra={"method": method})
            raise
        except Exception as exc:
            if not isinstance(exc, BangerError):  # user errors are logged without a traceback
                log.exception("request failed", extra={"method": method})
            else:
                log.info("request refused", extra={"method": method, "error": str(exc)})
            return None if notification else rpc.error_response(req_id, to_rpc_error(exc))
        return None if notification else rpc.response(req_id, result)
