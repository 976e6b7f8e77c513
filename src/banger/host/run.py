"""The only place banger starts subprocesses.

Every external program goes through :func:`run` (wait for it), :func:`start` (a long-lived child the
caller owns, such as a VMM) or :func:`spawn_detached` (the daemon, started by the CLI). Failures become
:class:`~banger.errors.HostError` / :class:`~banger.errors.ToolMissing` with the command line and the tail of
its stderr, so callers never see ``OSError`` or ``CalledProcessError``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.errors import HostError, OperationTimeout, ToolMissing
from banger.paths import tool_log

# How to install each tool banger calls, for ToolMissing hints.
INSTALL_HINTS: dict[str, str] = {
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "qemu-img": "apt-get install qemu-utils",
    "mkfs.ext4": "apt-get install e2fsprogs",
    "debugfs": "apt-get install e2fsprogs",
    "e2fsck": "apt-get install e2fsprogs",
    "resize2fs": "apt-get install e2fsprogs",
    "mmdebstrap": "apt-get install mmdebstrap",
    "nft": "apt-get install nftables",
    "ssh": "apt-get install openssh-client",
    "git": "apt-get install git",
    "gpgv": "apt-get install gpgv",
    "losetup": "apt-get install mount",
    "dmsetup": "apt-get install dmsetup",
    "ip": "apt-get install iproute2",
    "skopeo": "apt-get install skopeo",
    "resolvectl": "apt-get install systemd-resolved",
    "depmod": "apt-get install kmod",
}


# Programs banger looks for and copes without (a probe says what is missing); setup.sh need not install them.
OPTIONAL_TOOLS = frozenset({"dmsetup", "resolvectl", "firecracker", "jailer"})


@dataclass(frozen=True)
class Completed:
    """Result of a finished command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


def which(tool: str) -> str | None:
    """Absolute path of ``tool`` on PATH (also /usr/sbin and /sbin, which non-root PATHs lack)."""
    found = shutil.which(tool)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        cand = Path(d) / tool
        try:
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
        except OSError:  # a directory on the way this user may not search: not found, not a crash
            continue
    return None


def require(tool: str) -> str:
    """Path of ``tool``, or ToolMissing naming the package that provides it."""
    path = tool if os.path.isabs(tool) and os.access(tool, os.X_OK) else which(tool)
    if not path:
        hint = INSTALL_HINTS.get(os.path.basename(tool), f"install {tool} and make sure it is on PATH")
        raise ToolMissing(f"required host program {tool!r} was not found", hint=hint)
    return path


def _record(argv: Sequence[str]) -> None:
    """Append the resolved program and its arguments to ``$BANGER_TOOL_LOG``: test runs check that setup.sh
    installs every program used, and that the host never ran a program on a guest's disk."""
    log = tool_log()
    if log is not None:
        with open(log, "a", errors="backslashreplace") as f:  # an argument may be a name that is not UTF-8
            f.write(f"{argv[0]}\t{shlex.join(argv)}".replace("\n", " ") + "\n")


def _describe(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) < 300 else text[:300] + " ..."


def _failure(argv: Sequence[str], rc: int, stderr: bytes) -> HostError:
    tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
    detail = ("; ".join(tail)) if tail else "no output on stderr"
    return HostError(f"`{_describe(argv)}` failed with exit status {rc}: {detail}", data={"returncode": rc})


async def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: int | None = subprocess.PIPE,
    as_user: tuple[int, int] | None = None,
    pass_fds: Sequence[int] = (),
) -> Completed:
    """Run ``argv`` to completion; raise HostError on a non-zero exit when ``check``.

    ``as_user`` = (uid, gid) runs it as that user with no supplementary groups (the daemon must be root);
    ``pass_fds`` are inherited by the child under the same numbers (``/proc/self/fd/N`` names them).
    """
    args = [str(a) for a in argv]
    args[0] = require(args[0])
    _record(args)
    identity = {} if as_user is None else {"user": as_user[0], "group": as_user[1], "extra_groups": []}
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            **identity,  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise HostError(f"could not start `{_describe(args)}`: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise OperationTimeout(f"`{_describe(args)}` did not finish within {timeout:g}s") from exc
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    result = Completed(tuple(args), proc.returncode or 0, out or b"", err or b"")
    if check and result.returncode != 0:
        raise _failure(args, result.returncode, result.stderr)
    return result


def run_sync(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Completed:
    """Blocking twin of :func:`run`, for the CLI and doctor, which have no event loop."""
    args = [str(a) for a in argv]
    args[0] = require(args[0])
    _record(args)
    try:
        cp = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise OperationTimeout(f"`{_describe(args)}` did not finish within {timeout}s") from exc
    except OSError as exc:
        raise HostError(f"could not start `{_describe(args)}`: {exc}") from exc
    result = Completed(tuple(args), cp.returncode, cp.stdout, cp.stderr)
    if check and cp.returncode != 0:
        raise _failure(args, cp.returncode, cp.stderr)
    return result


async def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.DEVNULL,
    stdin: int | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    new_session: bool = True,
    pass_fds: Sequence[int] = (),
) -> asyncio.subprocess.Process:
    """Start a long-lived child (a VMM, a server) that the caller must stop."""
    args = [str(a) for a in argv]
    args[0] = require(args[0])
    _record(args)
    try:
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
            start_new_session=new_session,
            pass_fds=tuple(pass_fds),
        )
    except OSError as exc:
        raise HostError(f"could not start `{_describe(args)}`: {exc}") from exc


def spawn_detached(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a process in its own session, detached from the terminal, output appended to ``log_path``."""
    args = [str(a) for a in argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                env=None if env is None else {**os.environ, **env},
            )
        except OSError as exc:
            raise HostError(f"could not start `{_describe(args)}`: {exc}") from exc
    return proc.pid
