"""Byte streams between the host and a guest for workspaces: a host ``tar`` piped into a guest command,
and a guest command's stdout drained into a host file. asyncssh errors become GuestError here."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

from banger.errors import GuestError, HostError
from banger.guest import ssh
from banger.host.run import start

CHUNK = 256 << 10


async def pipe_tar(conn: asyncssh.SSHClientConnection, tar_argv: Sequence[str], names: Sequence[str],
                   guest_command: str) -> tuple[int, ssh.ExecResult]:
    """Run ``tar_argv`` on the host with ``names`` (NUL-separated) on its stdin and stream its archive
    into ``guest_command``'s stdin; (bytes sent, guest result). The archive is never held in memory.

    A guest command that exits early (refusing the target) is reported through its exit status."""
    tar = await start(tar_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      new_session=False)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_feed_names(tar, names))
            errors = tg.create_task(_read_all(tar.stderr))
            sent, complete, result = await _forward(conn, tar, guest_command)
            if not complete:
                tar.kill()
        rc = await tar.wait()
    finally:
        if tar.returncode is None:
            tar.kill()
            await tar.wait()
    if complete and rc not in (0, 1):  # 1: a file changed while it was read; the archive is still whole
        raise HostError(f"host tar of the workspace failed ({rc}): {errors.result().decode(errors='replace')[-300:]}")
    if not complete and result.exit_status == 0:
        raise GuestError("the guest stopped reading the workspace stream before its end")
    return sent, result


async def _feed_names(tar: asyncio.subprocess.Process, names: Sequence[str]) -> None:
    assert tar.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # tar was killed: the guest refused
        for i in range(0, len(names), 1000):
            tar.stdin.write(b"".join(n.encode(errors="surrogateescape") + b"\0" for n in names[i:i + 1000]))
            await tar.stdin.drain()
        tar.stdin.close()


async def _read_all(stream: asyncio.StreamReader | None) -> bytes:
    return await stream.read() if stream is not None else b""


async def _forward(conn: asyncssh.SSHClientConnection, tar: asyncio.subprocess.Process,
                   command: str) -> tuple[int, bool, ssh.ExecResult]:
    """(bytes sent, whether the whole archive went, the guest's result)."""
    assert tar.stdout is not None
    try:
        proc = await conn.create_process(command, encoding=None)
        async with proc:
            collect = asyncio.gather(proc.stdout.read(), proc.stderr.read())
            sent, complete = await _copy_until_guest_exits(tar.stdout, proc.stdin, collect)
            # EOF on stdin also after a refusal: sshd keeps a session channel open until its input side
            # is closed, so without it the wait below never ends.
            with contextlib.suppress(asyncssh.Error, OSError):
                proc.stdin.write_eof()
            out, err = await collect
            if not complete:
                proc.close()
            done = await proc.wait(check=False)
    except (asyncssh.Error, OSError) as exc:
        raise GuestError(f"streaming the workspace into the guest failed: {exc}") from exc
    status = done.exit_status if done.exit_status is not None and done.exit_status >= 0 else 255
    return sent, complete, ssh.ExecResult(status, bytes(out), bytes(err))


async def _copy_until_guest_exits(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes],
                                  guest_output: asyncio.Future[Any]) -> tuple[int, bool]:
    """Copy ``source`` into the channel until EOF: (bytes sent, reached EOF).

    A guest command that exits without reading (it refused the target) leaves the SSH window full, and a
    blocked ``drain()`` would then wait forever: the copy stops as soon as the guest's output ends.
    """
    sent = [0]
    copy: asyncio.Future[Any] = asyncio.ensure_future(_copy(source, sink, sent))
    await asyncio.wait({copy, guest_output}, return_when=asyncio.FIRST_COMPLETED)
    if copy.done():
        return sent[0], copy.result()
    copy.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await copy
    return sent[0], False


async def _copy(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes], sent: list[int]) -> bool:
    """Copy ``source`` to the channel until EOF (True), or until the guest closes it (False)."""
    while chunk := await source.read(CHUNK):
        try:
            sink.write(chunk)
            await sink.drain()
        except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
            return False
        sent[0] += len(chunk)
    return True


async def drain_to_file(conn: asyncssh.SSHClientConnection, command: str, dest: Path,
                        limit: int) -> ssh.ExecResult:
    """Run ``command`` in the guest, writing its stdout to ``dest`` as it arrives; stdout in the result is empty.

    A guest that sends more than ``limit`` bytes is cut off with a GuestError (``dest`` is the caller's).
    """
    try:
        proc = await conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
        async with proc:
            errors = asyncio.ensure_future(proc.stderr.read(64 << 10))
            written = 0
            with open(dest, "wb") as out:
                while chunk := await proc.stdout.read(CHUNK):
                    written += len(chunk)
                    if written > limit:
                        proc.kill()
                        raise GuestError(f"the guest's output passed the {limit >> 20} MiB limit",
                                         hint="commit the work in the guest and push it, or export from a "
                                              "later --base-commit")
                    out.write(chunk)
            err = await errors
            done = await proc.wait(check=False)
    except (asyncssh.Error, OSError) as exc:
        raise GuestError(f"reading {command.splitlines()[0]!r}'s output from the guest failed: {exc}") from exc
    status = done.exit_status if done.exit_status is not None and done.exit_status >= 0 else 255
    return ssh.ExecResult(status, b"", bytes(err))
