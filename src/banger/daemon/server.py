"""The Unix-socket JSON-RPC server: peer-uid check, framing, dispatch through the METHODS table.

Each connection reads frames in a loop and runs every request as its own task, so a slow call does not
block the next; when the client disconnects, its in-flight requests are cancelled. Nothing a client
sends can stop the server: bad frames get JSON-RPC errors and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from banger import rpc
from banger.errors import BangerError, PermissionDenied, to_rpc_error

log = logging.getLogger("banger.daemon.server")


class FrameTooLarge(Exception):
    """A line exceeded rpc.MAX_FRAME; it has been consumed and discarded."""


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next line without its newline; None at EOF (a trailing partial line counts as a frame)."""
    try:
        line = await reader.readuntil(b"\n")
        return line[:-1]
    except asyncio.IncompleteReadError as exc:
        return exc.partial or None
    except asyncio.LimitOverrunError as exc:
        await _discard_line(reader, exc.consumed)
        raise FrameTooLarge() from None


async def _discard_line(reader: asyncio.StreamReader, consumed: int) -> None:
    while True:
        await reader.readexactly(consumed) if consumed else None
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.IncompleteReadError:
            return
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed



Dispatch = Callable[[str, dict[str, Any]], Awaitable[Any]]


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The connecting process's uid from SO_PEERCRED (None if the kernel will not say)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Server:
    """Serves one socket; ``dispatch(method, params)`` returns a JSON-able result or raises."""

    def __init__(self, path: Path, dispatch: Dispatch, *, owner_uid: int | None = None):
        self.path = path
        self.dispatch = dispatch
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._on_connect, path=str(self.path), limit=rpc.MAX_FRAME)
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

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            uid = peer_uid(writer)
            if not self._allowed(uid):
                log.warning("refused connection", extra={"peer_uid": uid})
                err = PermissionDenied(
                    f"uid {uid} may not use this banger daemon (owner uid {self.owner_uid})",
                    hint="run banger as the user who owns the daemon, or as root",
                )
                writer.write(rpc.encode(rpc.error_response(None, to_rpc_error(err))))
                await writer.drain()
                return
            await _Connection(reader, writer, self.dispatch).serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dispatch: Dispatch):
        self.reader = reader
        self.writer = writer
        self.dispatch = dispatch
        self.tasks: set[asyncio.Task[None]] = set()
        self.write_lock = asyncio.Lock()

    async def serve(self) -> None:
        try:
            while True:
                try:
                    frame = await read_frame(self.reader)
                except FrameTooLarge:
                    await self.send(rpc.error_response(None, rpc.invalid_request(
                        f"message larger than {rpc.MAX_FRAME} bytes; it was discarded")))
                    continue
                if frame is None:
                    return
                if not frame.strip():
                    continue
                task = asyncio.create_task(self.handle(frame))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            # The client went away: nobody will read these answers, so stop the work.
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.write_lock:
            self.writer.write(rpc.encode(message))
            await self.writer.drain()

    async def handle(self, frame: bytes) -> None:
        try:
            req_id, method, params, notification = rpc.decode_request(frame)
        except ValueError as exc:
            error, req_id = exc.args[0], (exc.args[1] if len(exc.args) > 1 else None)
            await self.send(rpc.error_response(req_id, error))
            return
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
            if not notification:
                await self.send(rpc.error_response(req_id, to_rpc_error(exc)))
            return
        if not notification:
            await self.send(rpc.response(req_id, result))

