"""Image work that keeps file owners exact, done by the owner: in a user namespace (banger.host.userns).

As root, an OCI flatten or a golden build runs in the daemon. As the owner it runs in a child process
that is root of a user namespace mapped onto the owner's subordinate ids: ``python -m
banger.images.rootless TASK ARGS_JSON``. The child reports on stdout, one JSON object per line (``stage``,
``progress``, ``log``, ``note``, then ``result`` or ``error``, banger's RPC error object), which
:func:`in_userns` hands to the operation's reporter, so the user sees the same stages either way.

What the child leaves for the owner (the finished images, their directory) it hands over with
:func:`give_back`; what it could not remove when it failed, :func:`remove` removes from inside again,
since the owner cannot delete files owned by its subordinate ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from banger.errors import BangerError, HostError, from_rpc_error, to_rpc_error
from banger.host import userns
from banger.progress import Reporter

log = logging.getLogger("banger.images.rootless")
Mapper = userns.Mapper
Task = Callable[[dict[str, Any], Reporter], Coroutine[Any, Any, Any]]


async def in_userns(task: str, args: dict[str, Any], mapper: Mapper, reporter: Reporter,
                    timeout: float | None = None) -> Any:
    """Run ``task`` with ``args`` in the owner's user namespace; its result (plain JSON)."""
    outcome: dict[str, Any] = {}

    def on_line(line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if not (isinstance(msg, dict) and len(msg) == 1):
            reporter.log(line)  # a tool's stray output
            return
        (kind, value), = msg.items()
        if kind == "stage":
            reporter.stage(str(value))
        elif kind == "progress":
            reporter.progress(int(value[0]), None if value[1] is None else int(value[1]))
        elif kind == "log":
            reporter.log(str(value))
        elif kind == "note":
            reporter.note(str(value))
        else:
            outcome[kind] = value

    # In a PID namespace of its own whose init dies with ``unshare`` (which dies with the daemon): a daemon
    # killed mid-build takes mmdebstrap, apt and dpkg with it instead of leaving them writing.
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--",
            sys.executable, "-m", "banger.images.rootless", task, json.dumps(args)]
    try:
        await userns.run(argv, mapper, on_line=on_line, timeout=timeout)
    except HostError:
        if "error" not in outcome:
            raise
    if "error" in outcome:
        raise from_rpc_error(outcome["error"])
    return outcome.get("result")


async def remove(path: Path, mapper: Mapper) -> None:
    """``rm -rf path`` as the namespace's root: what a failed child left, owned by subordinate ids."""
    if os.path.lexists(path):
        await userns.run(["rm", "-rf", "--one-file-system", "--", str(path)], mapper, timeout=600)


async def remove_quietly(path: Path, mapper: Mapper | None) -> None:
    """:func:`remove` on a failure path: a clean-up that fails too is logged, never raised over the error
    that caused it (the start-up sweep tries again)."""
    if mapper is None or os.geteuid() == 0 or not os.path.lexists(path):
        return
    try:
        await remove(path, mapper)
    except BangerError as exc:
        log.warning("could not remove a user-namespace leftover", extra={"path": str(path), "error": str(exc)})


def give_back(*paths: Path) -> None:
    """Chown ``paths`` (recursively for directories) to the owner, seen from inside the namespace."""
    for path in paths:
        for p in (path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else ())):
            os.lchown(p, userns.OWNER_INSIDE, userns.OWNER_INSIDE)


class _Lines:
    """The child's reporter: one JSON line per event on stdout."""

    def _send(self, kind: str, value: Any) -> None:
        sys.stdout.write(json.dumps({kind: value}) + "\n")
        sys.stdout.flush()

    def stage(self, name: str) -> None:
        self._send("stage", name)

    def progress(self, done: int, total: int | None = None) -> None:
        self._send("progress", [done, total])

    def log(self, message: str) -> None:
        self._send("log", message)

    def note(self, message: str) -> None:
        self._send("note", message)


def _tasks() -> dict[str, Task]:
    from banger.images import golden, oci_pull

    return {"oci_build": oci_pull.build_task, "golden_build": golden.build_task}


def main(argv: list[str]) -> int:
    task, args = argv[0], json.loads(argv[1])
    out = _Lines()
    try:
        result: Any = asyncio.run(_tasks()[task](args, out))
    except BangerError as exc:
        out._send("error", to_rpc_error(exc))
        return 1
    except OSError as exc:  # ENOSPC, EPERM...: said plainly, not as a traceback
        out._send("error", to_rpc_error(HostError(f"{task}: {exc}")))
        return 1
    out._send("result", result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
