"""Running a command in a guest through the daemon and the guest agent: `vm run -- CMD`, `vm exec`.

The fast path: no SSH handshake, no sshd session and no PAM in an emulated guest. The CLI starts the
command, long-polls its output (written to our stdout/stderr as it comes), feeds our stdin from a thread
on a second connection when it is not a terminal (a terminal's input would need a TTY in the guest:
interactive use stays on SSH), and passes Ctrl-C on as SIGINT over a third (a second Ctrl-C kills); the
command's status is ours. Returns None when the
VM has no agent, so the caller uses SSH instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence

from banger import api, script
from banger.client import Client
from banger.errors import NO_AGENT, BangerError, GuestError

STDIN_CHUNK = 1 << 20


def run_in_guest(client: Client, ref: str, command: Sequence[str], workdir: str | None) -> int | None:
    """Run ``command`` (the CLI's ``-- ARGS``) in VM ``ref``; its exit status, or None without an agent."""
    try:
        exec_id = client.vm_exec_start(api.ExecStart(ref=ref, command=script.shell_command(list(command)),
                                                     workdir=workdir))
    except GuestError as exc:
        if exc.data.get("reason") == NO_AGENT:
            return None
        raise
    feeder = _start_stdin(client, exec_id)
    try:
        return _follow(client, exec_id)
    finally:
        if feeder is not None:
            feeder.join(timeout=0.1)  # a daemon thread: never holds the exit up


def _follow(client: Client, exec_id: str) -> int:
    interrupts = 0
    side: list[Client] = []  # a second connection: the main one may be mid-read when Ctrl-C comes

    def interrupted(signo: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        try:
            if not side:
                side.append(client.another())
            side[0].vm_exec_signal(exec_id, 2 if interrupts == 1 else 9)
        except (BangerError, OSError):
            pass  # it finished meanwhile (or the daemon went): the read loop says which

    def write(stream: str, data: bytes) -> None:
        fd = 1 if stream == "stdout" else 2
        while data:
            data = data[os.write(fd, data):]

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        return client.vm_exec_drain(exec_id, write)
    finally:
        signal.signal(signal.SIGINT, previous)
        for extra in side:
            extra.close()


def _start_stdin(client: Client, exec_id: str) -> threading.Thread | None:
    """Close the command's stdin at once for a terminal, else copy ours into it from a thread."""
    if sys.stdin is None or sys.stdin.isatty():
        client.vm_exec_write(exec_id, eof=True)
        return None
    return client.vm_exec_feed(exec_id, iter(lambda: os.read(0, STDIN_CHUNK), b""))
