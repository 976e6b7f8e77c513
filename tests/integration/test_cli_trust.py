"""The CLI trusts only the real daemon, and the daemon follows no symlink planted in its runtime directory.

A fake "daemon" (a small Unix-socket server that records every byte it receives) stands where bangerd's
socket should be; the CLI must refuse, with PermissionDenied, before sending it anything: when the
runtime directory is open to others, when it is a symlink, and when the server runs as another user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.client import Client
from banger.errors import PermissionDenied
from banger.testing.daemon import Home

NOBODY = 65534

# The fake daemon, runnable by the system interpreter as any user: bind, say "ready", then print one JSON
# line per connection with everything that connection sent, until killed.
FAKE_DAEMON = r"""
import json, socket, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    conn.settimeout(10)
    got = b""
    try:
        while chunk := conn.recv(65536):
            got += chunk
    except OSError:
        pass
    conn.close()
    print(json.dumps({"got": got.decode(errors="replace")}), flush=True)
"""


class FakeDaemon:
    """The fake daemon as a subprocess; :meth:`received` stops it and returns what each connection sent."""

    def __init__(self, socket_path: Path, *, as_uid: int | None = None):
        prefix = [] if as_uid is None else ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups"]
        self.proc = subprocess.Popen([*prefix, "/usr/bin/python3", "-c", FAKE_DAEMON, str(socket_path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready", self.stop()

    def stop(self) -> str:
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        return err

    def received(self) -> list[str]:
        time.sleep(0.2)  # a connection the CLI just closed is read to its end
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return [json.loads(line)["got"] for line in out.splitlines()]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that other users may traverse (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="bt-trust-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _refused(home: Home, *what: str) -> str:
    res = home.cli("daemon", "status")
    assert res.returncode == PermissionDenied.exit_code, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    for text in what:
        assert text in res.stderr, res.stderr
    return res.stderr


def test_a_runtime_dir_open_to_others_is_refused(home: Home) -> None:
    home.layout.ensure()
    fake = FakeDaemon(home.layout.socket)
    try:
        home.layout.runtime_dir.chmod(0o755)
        _refused(home, str(home.layout.runtime_dir), "mode 0755", "chmod 700")
        with pytest.raises(PermissionDenied):
            Client.connect(home.layout, autostart=False)
    finally:
        got = fake.received()
    assert got == [], "the CLI connected (and may have sent a request) through an untrusted directory"
    assert home.daemon_pid() is None, "no daemon may be started in such a directory either"
    assert oct(home.layout.runtime_dir.stat().st_mode & 0o777) == "0o755", "the CLI must not 'fix' it silently"


def test_a_symlinked_runtime_dir_is_refused(home: Home, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    fake = FakeDaemon(real / "bangerd.sock")
    try:
        home.layout.runtime_dir.parent.mkdir(parents=True, exist_ok=True)
        home.layout.runtime_dir.symlink_to(real)
        _refused(home, str(home.layout.runtime_dir), "symlink")
    finally:
        got = fake.received()
    assert got == []
    assert sorted(p.name for p in real.iterdir()) == ["bangerd.sock"], "nothing was created through the link"


def test_a_socket_served_by_another_user_is_refused(home: Home, shared_dir: Path) -> None:
    home.layout.ensure()
    own = shared_dir / "nobody"
    own.mkdir(mode=0o700)
    os.chown(own, NOBODY, NOBODY)
    fake = FakeDaemon(own / "s", as_uid=NOBODY)
    try:
        os.rename(own / "s", home.layout.socket)  # as if another user had got a socket into the directory
        err = _refused(home, str(home.layout.socket), f"uid {NOBODY}", f"pid {fake.proc.pid}")
        assert "nothing was sent" in err
        with pytest.raises(PermissionDenied, match="not your bangerd"):
            Client.connect(home.layout)
    finally:
        got = fake.received()
    assert got and all(g == "" for g in got), f"the fake daemon received {got!r}"


@pytest.mark.parametrize("which", ["bangerd.lock", "bangerd.pid"])
def test_a_symlink_planted_as_lock_or_pid_file_is_not_followed(home: Home, tmp_path: Path, which: str) -> None:
    home.layout.ensure()
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    before = precious.stat()
    (home.layout.runtime_dir / which).symlink_to(precious)
    proc = subprocess.Popen([sys.executable, "-m", "banger.daemon"], env=home.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == PermissionDenied.exit_code, err
    assert f"{home.layout.runtime_dir / which} is a symlink" in err and "Traceback" not in err
    assert precious.read_text() == "keep me\n" and precious.stat().st_mtime_ns == before.st_mtime_ns
    assert not home.layout.socket.exists()
    started = home.cli("daemon", "status")  # the CLI starting it says why it could not
    assert started.returncode != 0 and "is a symlink" in started.stderr, started.stderr
    assert precious.read_text() == "keep me\n"
