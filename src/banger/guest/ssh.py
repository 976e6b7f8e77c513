"""SSH into guests with asyncssh: banger's key, host keys pinned on first use in banger's own known_hosts.

Host-key pinning is done in an :class:`asyncssh.SSHClient` subclass: asyncssh is given a matcher that
trusts nothing, so every server key reaches :meth:`_PinningClient.validate_host_public_key`, which
accepts the key already pinned for the guest's address, pins the first key it sees for an address that
has none (trust on first use), and refuses any other key. asyncssh then checks that the server holds the
private half before the session proceeds. Entries are plain OpenSSH ``known_hosts`` lines
(``172.30.0.5,dev.vm ssh-ed25519 AAAA...``), so the system ``ssh`` reads the same file (:func:`ssh_argv`,
``banger ssh-config``). The user's own ``~/.ssh`` (config, known_hosts, agent) is never consulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from banger.errors import GuestError, InvalidArgument, OperationTimeout
from banger.files import write_atomic

HOST_KEY_CHANGED = "host-key-changed"
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")


@dataclass(frozen=True)
class ExecResult:
    """What a command run in the guest returned; ``exit_status`` is 128+N when killed by signal N."""

    exit_status: int
    stdout: bytes
    stderr: bytes


# --- keys -------------------------------------------------------------------------------------------


def ensure_key(path: Path) -> Path:
    """Create an ed25519 key pair at ``path`` (0600) and ``path.pub`` unless it exists; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists():
        if not path.with_name(path.name + ".pub").exists():
            write_atomic(path.with_name(path.name + ".pub"), _load_key(path).export_public_key(), 0o644)
        return path
    key = asyncssh.generate_private_key("ssh-ed25519", comment="banger")
    write_atomic(path.with_name(path.name + ".pub"), key.export_public_key(), 0o644)
    write_atomic(path, key.export_private_key(), 0o600)
    return path


def public_key_line(path: Path) -> str:
    """The ``ssh-ed25519 AAAA... banger`` line for the private key at ``path`` (for authorized_keys)."""
    return _load_key(path).export_public_key().decode().strip()


def _load_key(path: Path) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise InvalidArgument(
            f"cannot read banger's SSH key {path}: {exc}",
            hint="fix ssh_key_path in config.toml, or delete the file so banger makes a new key",
        ) from exc


# --- banger's known_hosts ---------------------------------------------------------------------------


def host_pattern(host: str, port: int = 22) -> str:
    """How OpenSSH names ``host`` in known_hosts: bare on port 22, ``[host]:port`` otherwise."""
    if not _HOST_RE.match(host):
        raise InvalidArgument(f"{host!r} is not a host name or address banger can pin a key for")
    return host if port == 22 else f"[{host}]:{port}"


def _entries(known_hosts: Path) -> list[tuple[list[str], str]]:
    """(patterns, "keytype base64") for each line of ``known_hosts``; a missing file is empty."""
    try:
        lines = known_hosts.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            out.append((parts[0].split(","), f"{parts[1]} {parts[2]}"))
    return out


def pinned_keys(known_hosts: Path, host: str, port: int = 22) -> list[str]:
    """The pinned ``keytype base64`` strings for ``host`` (an address or ``<name>.vm``)."""
    pattern = host_pattern(host, port)
    return [key for patterns, key in _entries(known_hosts) if pattern in patterns]


def is_pinned(known_hosts: Path, host: str, port: int = 22) -> bool:
    """Whether banger has a host key on record for ``host``."""
    return bool(pinned_keys(known_hosts, host, port))


@contextlib.contextmanager
def _locked(known_hosts: Path) -> Iterator[None]:
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(known_hosts.with_name(known_hosts.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def pin_host_key(known_hosts: Path, hosts: Sequence[str], key: str, port: int = 22) -> None:
    """Record ``key`` (``keytype base64``) for ``hosts`` unless the first (the address) has a key already.

    Lines naming only the aliases (``dev.vm`` of an earlier VM at another address) are replaced: the
    address is what banger allocated and connected to, the alias just follows it.
    """
    patterns = [host_pattern(h, port) for h in hosts]
    with _locked(known_hosts):
        if any(patterns[0] in p for p, _ in _entries(known_hosts)):
            return
        lines = known_hosts.read_text().splitlines(keepends=True) if known_hosts.exists() else []
        keep = [ln for ln in lines if not set(patterns).intersection(_line_patterns(ln))]
        write_atomic(known_hosts, "".join([*keep, f"{','.join(patterns)} {key}\n"]).encode(), 0o600)


def _line_patterns(line: str) -> list[str]:
    fields = line.split()
    return fields[0].split(",") if fields and not line.startswith("#") else []


def forget_host(known_hosts: Path, *names: str, port: int = 22) -> int:
    """Drop every line naming any of ``names`` (addresses or ``<name>.vm``); return how many went."""
    drop = {host_pattern(n, port) for n in names}
    with _locked(known_hosts):
        try:
            lines = known_hosts.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            return 0
        keep = [ln for ln in lines if not drop.intersection(_line_patterns(ln))]
        if len(keep) != len(lines):
            write_atomic(known_hosts, "".join(keep).encode(), 0o600)
        return len(lines) - len(keep)


class _PinningClient(asyncssh.SSHClient):
    """Accepts the pinned key, pins the first key of an unknown host, refuses a changed key."""

    def __init__(self, known_hosts: Path, hosts: Sequence[str], port: int):
        self.known_hosts, self.hosts, self.port = known_hosts, list(hosts), port
        self.changed_from: list[str] = []

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        offered = " ".join(key.export_public_key("openssh").decode().split()[:2])
        pinned = pinned_keys(self.known_hosts, self.hosts[0], self.port)
        if not pinned:
            pin_host_key(self.known_hosts, self.hosts, offered, self.port)
            return True
        if offered in pinned:
            return True
        self.changed_from = pinned
        return False


def _changed_key_error(ip: str, known_hosts: Path) -> GuestError:
    return GuestError(
        f"the SSH host key of {ip} is not the one banger recorded when it first connected; this may be an "
        f"attack (someone else answering at that address), so banger refused to connect",
        hint=f"if the VM was recreated and this is expected, `banger vm delete` drops its entries; or remove "
        f"them by hand with `ssh-keygen -R {ip} -f {known_hosts}`",
        data={"reason": HOST_KEY_CHANGED},
    )


# --- connections ------------------------------------------------------------------------------------


async def connect(
    ip: str,
    *,
    key_path: Path,
    known_hosts: Path,
    host_aliases: Iterable[str] = (),
    timeout: float = 15.0,
    port: int = 22,
    user: str = "root",
) -> asyncssh.SSHClientConnection:
    """An authenticated SSH connection to ``user@ip`` with banger's key; GuestError when that fails."""
    hosts = [ip, *host_aliases]
    client = _PinningClient(known_hosts, hosts, port)
    key = _load_key(key_path)
    try:
        conn, _ = await asyncio.wait_for(
            asyncssh.create_connection(
                lambda: client, ip, port=port, username=user, client_keys=[key], known_hosts=_trust_nothing,
                config=None, agent_path=None, agent_forwarding=False, password_auth=False,
                kbdint_auth=False, gss_auth=False, preferred_auth="publickey", connect_timeout=timeout,
                keepalive_interval=15,
            ),
            timeout,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        if client.changed_from:
            raise _changed_key_error(ip, known_hosts) from exc
        raise GuestError(f"could not verify the SSH host key of {ip}: {exc.reason}") from exc
    except asyncssh.PermissionDenied as exc:
        raise GuestError(
            f"{ip} refused banger's SSH key for {user}",
            hint=f"the guest's /root/.ssh/authorized_keys must hold the key in {key_path}.pub",
            data={"reason": "permission-denied"},
        ) from exc
    except TimeoutError as exc:
        raise GuestError(f"SSH to {ip}:{port} did not complete within {timeout:g}s") from exc
    except (asyncssh.Error, OSError) as exc:
        raise GuestError(f"could not open an SSH session to {ip}:{port}: {_describe(exc)}") from exc
    return conn


def _trust_nothing(host: str, addr: str, port: int | None) -> tuple[list[object], list[object], list[object]]:
    # A matcher rather than an empty list: asyncssh would load ~/.ssh/known_hosts for an empty one.
    return [], [], []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    return str(exc) or type(exc).__name__


def login_command(command: str) -> str:
    """``command`` wrapped in ``bash -lc`` so the guest's profile (PATH, mise) applies."""
    return f"bash -lc {shlex.quote(command)}"


def shell_command(argv: Sequence[str]) -> str:
    """The guest shell command for a CLI's ``-- ARGS``: one argument is a shell string, more are argv.

    ``-- 'make test | tee log'`` is run by the guest's shell as written (like ``ssh host CMD``);
    ``-- python -c "print('a b')"`` keeps its three arguments exactly (each quoted).
    """
    if not argv:
        raise InvalidArgument("no command given")
    return argv[0] if len(argv) == 1 else shlex.join(argv)


async def exec(
    conn: asyncssh.SSHClientConnection,
    command: str,
    *,
    stdin: bytes | None = None,
    login_shell: bool = True,
    timeout: float | None = None,
) -> ExecResult:
    """Run ``command`` (a shell string) in the guest and collect its exit status and output."""
    remote = login_command(command) if login_shell else command
    try:
        done = await conn.run(remote, input=stdin, encoding=None, check=False, timeout=timeout)
    except asyncssh.TimeoutError as exc:
        raise OperationTimeout(f"the guest command {command!r} did not finish within {timeout:g}s") from exc
    except (asyncssh.Error, OSError) as exc:
        raise GuestError(f"running {command!r} in the guest failed: {_describe(exc)}") from exc
    return ExecResult(_exit_status(done, command), _bytes(done.stdout), _bytes(done.stderr))


def _exit_status(done: asyncssh.SSHCompletedProcess, command: str) -> int:
    if done.exit_signal:
        name = done.exit_signal[0]
        sig = getattr(signal, f"SIG{name}", None)
        return 128 + (int(sig) if sig is not None else 0)
    if done.exit_status is None or done.exit_status < 0:
        raise GuestError(f"the SSH session running {command!r} ended without an exit status")
    return done.exit_status


def _bytes(data: object) -> bytes:
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode()


async def wait_ssh_ready(
    ip: str,
    *,
    key_path: Path,
    known_hosts: Path,
    host_aliases: Iterable[str] = (),
    timeout: float = 90.0,
    alive: Callable[[], bool] | None = None,
    port: int = 22,
) -> float:
    """Seconds until an authenticated session on ``ip`` runs ``true``; OperationTimeout otherwise.

    Pins the guest's host key on the first success. A changed host key fails at once (retrying cannot
    help); ``alive`` returning False (the VMM died) ends the wait early.
    """
    started = time.monotonic()
    deadline = started + timeout
    last = "nothing answered"
    while (left := deadline - time.monotonic()) > 0:
        if alive is not None and not alive():
            raise OperationTimeout(f"the VM's process exited before SSH to {ip} worked (last: {last})")
        try:
            return await _try_true(ip, key_path, known_hosts, host_aliases, port, min(left, 10.0)) - started
        except GuestError as exc:
            if exc.data.get("reason") == HOST_KEY_CHANGED:
                raise
            last = exc.message
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    raise OperationTimeout(f"SSH to {ip}:{port} was not ready within {timeout:g}s (last: {last})")


async def _try_true(
    ip: str, key_path: Path, known_hosts: Path, aliases: Iterable[str], port: int, timeout: float
) -> float:
    conn = await connect(ip, key_path=key_path, known_hosts=known_hosts, host_aliases=aliases,
                         timeout=timeout, port=port)
    async with conn:
        result = await exec(conn, "true", login_shell=False, timeout=timeout)
    if result.exit_status != 0:
        raise GuestError(f"`true` exited {result.exit_status} in the guest at {ip}")
    return time.monotonic()


# --- the system ssh client ------------------------------------------------------------------------


def ssh_argv(
    ip: str,
    *,
    key_path: Path,
    known_hosts: Path,
    user: str = "root",
    command: Sequence[str] | None = None,
    tty: bool,
    port: int = 22,
    strict: bool = True,
) -> list[str]:
    """The ``ssh`` command line for interactive use with banger's key and known_hosts.

    ``strict`` should be ``is_pinned(known_hosts, ip)``: ``accept-new`` pins on first use when banger has
    not connected yet. ``-F /dev/null`` keeps the user's ssh config (ControlMaster, ProxyJump, ...) out.
    """
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(key_path), "-p", str(port),
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ForwardAgent=no", "-o", "ForwardX11=no",
        "-o", f"UserKnownHostsFile={_ssh_quote(known_hosts)}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}", "-o", "LogLevel=ERROR",
        "-o", "ServerAliveInterval=15", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
        "-t" if tty else "-T", f"{user}@{ip}",
    ]
    if command:
        argv += ["--", login_command(shell_command(command))]
    return argv


def _ssh_quote(path: Path) -> str:
    # ssh's -o values split on whitespace unless double-quoted.
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text
