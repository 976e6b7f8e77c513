"""banger.guest.ssh against a real OpenSSH server (Debian's openssh-server) on a loopback port.

The sshd runs as root with its own config, host key and authorized_keys file in a temp dir, so the
tests need no VM; they cover what a guest's sshd does: key auth for root, exit status, stdin, quoting.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from banger.errors import GuestError, OperationTimeout
from banger.guest import ssh
from banger.host.run import run, run_sync

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """A daemonized sshd on 127.0.0.1:port accepting one authorized_keys file."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.authorized_keys = root / "authorized_keys"
        self.host_key = root / "host_ed25519"
        self.pid_file = root / "sshd.pid"

    def start(self) -> None:
        # sshd insists on its privilege-separation directory even when started by hand.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        run_sync(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key])
        self.authorized_keys.touch()
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\nPidFile {self.pid_file}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nLogLevel ERROR\n"
        )
        run_sync([SSHD, "-f", config, "-E", self.root / "sshd.log"])
        deadline = time.monotonic() + 10
        while not self.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.pid_file.exists():
            os.kill(int(self.pid_file.read_text()), 15)

    def host_key_line(self) -> str:
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(sshd: Sshd, tmp_path: Path) -> dict[str, object]:
    """A fresh banger key (authorized by the sshd) and a known_hosts with the sshd's key pinned, as the
    daemon pins a VM's key when it creates the VM."""
    key = ssh.ensure_key(tmp_path / "ssh" / "id_ed25519")
    sshd.authorized_keys.write_text(ssh.public_key_line(key) + "\n")
    known = tmp_path / "ssh" / "known_hosts"
    ssh.pin_host_key(known, ["127.0.0.1", "dev.vm"], sshd.host_key_line(), sshd.port)
    return {"key_path": key, "known_hosts": known, "port": sshd.port}


def test_ensure_key_creates_private_key_and_pub(tmp_path: Path) -> None:
    key = ssh.ensure_key(tmp_path / "state" / "ssh" / "id_ed25519")
    assert (key.stat().st_mode & 0o777, key.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    pub = Path(f"{key}.pub").read_text()
    assert pub.startswith("ssh-ed25519 AAAA") and ssh.public_key_line(key) == pub.strip()
    before = key.read_bytes()
    assert ssh.ensure_key(key) == key and key.read_bytes() == before  # second call keeps the key
    # The system ssh tooling reads it: ssh-keygen derives the same public key.
    derived = run_sync(["ssh-keygen", "-y", "-f", key]).out.split()[:2]
    assert derived == pub.split()[:2]


async def wait_listening(port: int, timeout: float = 10) -> None:
    """Until sshd accepts connections on 127.0.0.1:``port``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_the_pinned_key_is_accepted_and_nothing_is_added(sshd: Sshd, client: dict) -> None:
    await wait_listening(sshd.port)
    line = client["known_hosts"].read_text()
    assert line == f"[127.0.0.1]:{sshd.port},[dev.vm]:{sshd.port} {sshd.host_key_line()}\n"
    conn = await ssh.connect("127.0.0.1", host_aliases=["dev.vm"], timeout=10, **client)
    async with conn:
        result = await ssh.exec(conn, "echo hi; echo oops >&2; exit 7")
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"hi\n", b"oops\n")
    assert ssh.is_pinned(client["known_hosts"], "dev.vm", sshd.port)
    assert client["known_hosts"].read_text() == line


async def test_an_unpinned_host_is_refused_not_trusted_on_first_use(sshd: Sshd, client: dict) -> None:
    await wait_listening(sshd.port)
    client["known_hosts"].unlink()
    with pytest.raises(GuestError, match="no SSH host key pinned"):
        await ssh.connect("127.0.0.1", timeout=10, **client)
    started = time.monotonic()
    with pytest.raises(GuestError, match="no SSH host key pinned"):  # and waiting does not retry it
        await ssh.wait_ssh_ready("127.0.0.1", timeout=30, **client)
    assert time.monotonic() - started < 5
    assert not client["known_hosts"].exists() or not ssh.is_pinned(client["known_hosts"], "127.0.0.1", sshd.port)


async def test_stdin_quoting_and_login_shell(sshd: Sshd, client: dict) -> None:
    async with await ssh.connect("127.0.0.1", timeout=10, **client) as conn:
        piped = await ssh.exec(conn, "tr a-z A-Z", stdin=b"some input\n")
        quoted = await ssh.exec(conn, """printf '%s|' "two words" 'it'"'"'s' "$((6*7))" ; echo "$0" """)
        login = await ssh.exec(conn, "shopt -q login_shell && echo login")
        argv = await ssh.exec(conn, ssh.shell_command(["printf", "<%s>", "a b", "c'd", "$HOME"]))
        killed = await ssh.exec(conn, "kill -KILL $$")
    assert piped.stdout == b"SOME INPUT\n"
    assert quoted.stdout == b"two words|it's|42|bash\n"
    assert login.stdout == b"login\n"
    assert argv.stdout == b"<a b><c'd><$HOME>"
    assert killed.exit_status == 128 + 9


async def test_changed_host_key_is_refused(sshd: Sshd, client: dict) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
    ssh.pin_host_key(client["known_hosts"], ["127.0.0.1", "dev.vm"], " ".join(other), sshd.port)
    with pytest.raises(GuestError, match="may be an attack") as err:
        await ssh.connect("127.0.0.1", timeout=10, **client)
    assert "banger vm delete" in str(err.value) and err.value.data["reason"] == ssh.HOST_KEY_CHANGED
    # wait_ssh_ready does not retry a changed key: it fails at once.
    started = time.monotonic()
    with pytest.raises(GuestError, match="may be an attack"):
        await ssh.wait_ssh_ready("127.0.0.1", timeout=30, **client)
    assert time.monotonic() - started < 5
    # forget_host clears it (by alias too); only pinning the real key again lets banger in.
    assert ssh.forget_host(client["known_hosts"], "dev.vm", port=sshd.port) == 1
    with pytest.raises(GuestError, match="no SSH host key pinned"):
        await ssh.connect("127.0.0.1", timeout=10, **client)
    ssh.pin_host_key(client["known_hosts"], ["127.0.0.1"], sshd.host_key_line(), sshd.port)
    assert await ssh.wait_ssh_ready("127.0.0.1", timeout=10, **client) < 10


async def test_pinning_replaces_every_stale_line_for_the_address_or_name(sshd: Sshd, client: dict) -> None:
    known = client["known_hosts"]
    known.write_text(f"10.0.0.9,[dev.vm]:{sshd.port} ssh-ed25519 AAAAold\n# note\n"
                     f"[127.0.0.1]:{sshd.port} ssh-ed25519 AAAAolder\n")
    ssh.pin_host_key(known, ["127.0.0.1", "dev.vm"], sshd.host_key_line() + " comment", sshd.port)
    assert known.read_text() == f"# note\n[127.0.0.1]:{sshd.port},[dev.vm]:{sshd.port} {sshd.host_key_line()}\n"
    assert known.stat().st_mode & 0o777 == 0o600
    await ssh.wait_ssh_ready("127.0.0.1", host_aliases=["dev.vm"], timeout=10, **client)


async def test_unauthorized_key_is_a_guest_error(sshd: Sshd, client: dict, tmp_path: Path) -> None:
    stranger = ssh.ensure_key(tmp_path / "other" / "id_ed25519")
    with pytest.raises(GuestError, match="refused banger's SSH key"):
        await ssh.connect("127.0.0.1", key_path=stranger, known_hosts=client["known_hosts"],
                          port=sshd.port, timeout=10)


async def test_wait_ssh_ready_times_out_on_a_closed_port(client: dict) -> None:
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="not ready within 2s"):
        await ssh.wait_ssh_ready("127.0.0.1", key_path=client["key_path"], known_hosts=client["known_hosts"],
                                 port=free_port(), timeout=2)
    assert 1.5 < time.monotonic() - started < 4
    with pytest.raises(OperationTimeout, match="process exited"):
        await ssh.wait_ssh_ready("127.0.0.1", key_path=client["key_path"], known_hosts=client["known_hosts"],
                                 port=free_port(), timeout=30, alive=lambda: False)


async def test_ssh_argv_runs_the_system_client(sshd: Sshd, client: dict) -> None:
    known = client["known_hosts"]
    argv = ssh.ssh_argv("127.0.0.1", key_path=client["key_path"], known_hosts=known, port=sshd.port,
                        command=["printf", "%s,", "a b", "$0"], tty=False)
    assert "StrictHostKeyChecking=yes" in argv and "IdentitiesOnly=yes" in argv
    first = await run(argv)
    assert first.out == "a b,$0,"
    known.write_text("")  # the system ssh refuses an unpinned host too
    assert (await run(argv, check=False)).returncode == 255
    ssh.pin_host_key(known, ["127.0.0.1"], sshd.host_key_line(), sshd.port)
    strict = ssh.ssh_argv("127.0.0.1", key_path=client["key_path"], known_hosts=known, port=sshd.port,
                          command=["exit 3"], tty=False)
    assert "StrictHostKeyChecking=yes" in strict
    assert (await run(strict, check=False)).returncode == 3


async def test_a_guest_that_floods_its_output_is_cut_off(sshd: Sshd, client: dict) -> None:
    async with await ssh.connect("127.0.0.1", timeout=10, **client) as conn:
        started = time.monotonic()
        with pytest.raises(GuestError, match="printed more than 1 MiB"):
            await ssh.exec(conn, "yes flood", limit=1 << 20, timeout=30)
        assert time.monotonic() - started < 15
        assert (await ssh.exec(conn, "echo still fine")).stdout == b"still fine\n"
