"""Following a daemon operation: stages and a progress bar on a TTY, silence otherwise.

Ctrl-C at any moment after the request that starts the operation has been sent cancels the operation in
the daemon (whose undo stack cleans up) and exits 130. SIGINT is held back while that request is in
flight, so a Ctrl-C that lands before the CLI knows the operation's id is acted on as soon as it does.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from banger.cli import render
from banger.client import Client
from banger.errors import Cancelled, from_rpc_error

if TYPE_CHECKING:
    from banger.wire import Operation

POLL = 0.25
_SIGINT = {signal.SIGINT}


def run(client: Client, start: Callable[[], Operation], *, quiet: bool = False) -> Operation:
    """Start an operation with ``start()`` and follow it to its end; raise its error if it failed."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    try:
        op = start()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a Ctrl-C that came meanwhile is raised here
        op = _draw(client, op) if sys.stderr.isatty() and not quiet else _wait(client, op)
    except KeyboardInterrupt:
        _cancel(client, op)
        raise Cancelled(f"{op.kind} {op.target} was cancelled; nothing was left half-made") from None
    if op.state != "succeeded":
        raise from_rpc_error(op.error or {"message": f"{op.kind} {op.state}"})
    return op


def _cancel(client: Client, op: Operation) -> None:
    """Cancel ``op`` over a fresh connection (the old one may hold a half-read reply); uninterruptible."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    render.err.print(f"cancelling {op.kind} {op.target} ...", markup=False)
    with Client.connect(client.layout, autostart=False, daemon_uid=client.daemon_uid) as fresh:
        fresh.operation_cancel(op.id)


def _wait(client: Client, op: Operation) -> Operation:
    while op.state == "running":
        op = client.operation_wait(op.id, timeout=5)
    return op


def _draw(client: Client, op: Operation) -> Operation:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[sizes]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=render.console(stderr=True), transient=False) as bar:
        task = None
        seen = 0
        while True:
            for stage in op.stages[seen:]:
                if task is not None:
                    bar.update(task, completed=bar.tasks[task].total or 1, total=bar.tasks[task].total or 1)
                task = bar.add_task(stage, total=None, sizes="")
            seen = len(op.stages)
            if task is not None:
                sizes = f"{render.size(op.done)}/{render.size(op.total)}" if (op.total or 0) > 1 else ""
                bar.update(task, completed=op.done, total=op.total, sizes=sizes)
            if op.state != "running":
                if task is not None and op.state == "succeeded":
                    bar.update(task, completed=op.total or 1, total=op.total or 1)
                return op
            op = client.operation_wait(op.id, timeout=POLL)
