"""The clone re-homing script: every value quoted, the host key's private half never on the command line."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from banger.guest.rehome import Identity, rehome_script

ID = Identity(name="dev-1", mac="02:ab:cd:00:00:01", ip="172.30.0.9", prefixlen=24, gateway="172.30.0.1",
              host_key_public="ssh-ed25519 AAAAC3Nza banger")


def test_script_is_valid_sh_and_names_the_identity() -> None:
    text = rehome_script(ID, "0123456789abcdef0123456789abcdef")
    subprocess.run(["sh", "-n", "-c", text], check=True)
    assert "'link set dev eth0 address 02:ab:cd:00:00:01'" in text and "| ip -batch -" in text
    assert "'addr add 172.30.0.9/24 dev eth0'" in text and "default via 172.30.0.1" in text
    assert "> /proc/sys/kernel/hostname" in text and "0123456789abcdef0123456789abcdef" in text
    assert shlex.quote(ID.host_key_public) in text
    assert "PRIVATE KEY" not in text  # it arrives on stdin


def test_script_rewrites_hosts_and_keys_as_it_says(tmp_path: Path) -> None:
    # Run it for real against a scratch root: the paths are rewritten to point into tmp_path.
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\told-name\n::1\tip6-localhost\n")
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/ip").write_text("#!/bin/sh\ncat > \"$IPLOG\"\n")
    (tmp_path / "bin/ip").chmod(0o755)
    text = rehome_script(ID, "f" * 32).replace(" /etc/", f" {tmp_path}/etc/").replace(
        "> /proc/", f"> {tmp_path}/proc/").replace("< /etc/", f"< {tmp_path}/etc/")
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "IPLOG": str(tmp_path / "ip.log")}
    subprocess.run(["sh", "-c", text], input=b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END\n",
                   env=env, check=True)
    assert (tmp_path / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n::1\tip6-localhost\n127.0.1.1\tdev-1\n"
    key = tmp_path / "etc/ssh/ssh_host_ed25519_key"
    assert key.read_text() == "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END\n"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "etc/ssh/ssh_host_ed25519_key.pub").read_text() == ID.host_key_public + "\n"
    assert (tmp_path / "proc/sys/kernel/hostname").read_text() == "dev-1"
    assert (tmp_path / "etc/machine-id").read_text() == "f" * 32 + "\n"
    assert (tmp_path / "ip.log").read_text().splitlines()[0] == "link set dev eth0 address 02:ab:cd:00:00:01"


def test_hostile_values_stay_single_words() -> None:
    evil = Identity(name="x; touch /tmp/pwned", mac=ID.mac, ip="1.2.3.4", prefixlen=24, gateway="1.2.3.1",
                    host_key_public="key' ; rm -rf / ; '")
    text = rehome_script(evil, "id")
    assert "'x; touch /tmp/pwned'" in text and shlex.quote(evil.host_key_public) in text
    subprocess.run(["sh", "-n", "-c", text], check=True)
    # What becomes an `ip -batch` line is checked, not quoted: a newline there would be another command.
    for bad in ({"mac": "02:00:00:00:00:01\nlink del eth0"}, {"ip": "1.2.3.4\nx"}, {"gateway": "`id`"},
                {"prefixlen": 99}):
        with pytest.raises(ValueError):
            Identity(**{**ID.__dict__, **bad})


@pytest.mark.parametrize("session_binary", [None, "usr/lib/openssh/sshd-session", "usr/libexec/sshd-session"])
def test_sshd_is_sent_sighup_only_where_the_listener_holds_the_keys(tmp_path: Path,
                                                                    session_binary: str | None) -> None:
    # OpenSSH <= 9.7 (no sshd-session) reads the key per connection: its listener is left alone. From 9.8
    # the listener hands its keys to sshd-session and must re-exec. A real process stands in for sshd.
    hup = tmp_path / "got-hup"
    sshd = subprocess.Popen(["sh", "-c", f"trap 'echo hup > {hup}; exit 0' HUP; while :; do sleep 0.05; done"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run/sshd.pid").write_text(f"{sshd.pid}\n")
        if session_binary:
            (tmp_path / session_binary).parent.mkdir(parents=True)
            (tmp_path / session_binary).write_bytes(b"")
        (tmp_path / "etc/ssh").mkdir(parents=True)
        (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n")
        (tmp_path / "proc/sys/kernel").mkdir(parents=True)
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin/ip").write_text("#!/bin/sh\ncat > /dev/null\n")
        (tmp_path / "bin/ip").chmod(0o755)
        text = rehome_script(ID, "f" * 32)
        for path in ("/etc/", "/proc/", "/run/", "/usr/"):
            text = text.replace(f" {path}", f" {tmp_path}{path}").replace(f"<{path}", f"<{tmp_path}{path}")
        subprocess.run(["sh", "-c", text], input=b"key\n", env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}, check=True)
        if session_binary:
            sshd.wait(timeout=5)
            assert hup.read_text() == "hup\n"
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                sshd.wait(timeout=0.5)
            assert not hup.exists()
    finally:
        sshd.kill()
        sshd.wait()
