"""The CLI starts bangerd on first use, reuses it, replaces an old version, and stops it."""

from __future__ import annotations

import json
import os
import time

import pytest

from banger import __version__
from banger.testing.daemon import Home, _alive


def test_first_use_starts_daemon_and_reuses_it(home: Home) -> None:
    assert home.daemon_pid() is None
    first = home.cli("vm", "list", "--json", check=True)
    assert json.loads(first.stdout) == []
    pid = home.daemon_pid()
    assert pid is not None and _alive(pid)
    assert oct(home.layout.socket.stat().st_mode & 0o777) == "0o600"
    assert oct(home.layout.runtime_dir.stat().st_mode & 0o777) == "0o700"
    home.cli("image", "list", "--json", check=True)
    assert home.daemon_pid() == pid, "a second command must reuse the running daemon"


def test_version_mismatch_restarts_daemon(home: Home) -> None:
    old_pid = home.start_daemon("--version-override", "0.0.0-old")
    with home.client() as c:
        assert c.ping().version == "0.0.0-old"
    home.cli("vm", "list", check=True)
    new_pid = home.daemon_pid()
    assert new_pid != old_pid
    deadline = time.monotonic() + 10
    while _alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(old_pid), "the old daemon must have exited"
    with home.client() as c:
        assert c.ping().version == __version__


def test_daemon_status_stop_and_logs(home: Home) -> None:
    status = json.loads(home.cli("daemon", "status", "--json", check=True).stdout)
    assert status["version"] == __version__
    assert status["schema_version"] >= 1
    pid = status["pid"]
    stopped = home.cli("daemon", "stop", check=True)
    assert f"pid {pid}" in stopped.stderr
    assert not _alive(pid)
    assert not home.layout.socket.exists()
    logs = home.cli("daemon", "logs", "-n", "200", check=True).stdout.splitlines()
    records = [json.loads(line) for line in logs]
    assert any(r["msg"] == "bangerd started" for r in records)
    assert any(r["msg"] == "bangerd stopped" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


def test_second_daemon_refuses_to_start(home: Home) -> None:
    home.start_daemon()
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "banger.daemon"], env=home.env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1
    assert "already serves" in proc.stderr


def test_user_errors_are_one_or_two_lines_without_traceback(home: Home) -> None:
    proc = home.cli("vm", "show", "no-such-vm")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, proc.stderr
    assert "no VM named 'no-such-vm'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert os.environ.get("BANGER_HOME") != str(home.root)


def test_a_long_lived_client_of_another_version_is_told_to_restart(home: Home,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A process (say `banger mcp`) that outlived an upgrade must not restart the new daemon on every call."""
    from banger.client import Client
    from banger.errors import DaemonUnavailable

    for key, value in home.env.items():  # the daemon this process starts must find the test's home
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(Client, "_installed_instead", None)
    first = home.start_daemon()
    try:
        Client.connect(home.layout, expect_version="0.0.0-before-upgrade")
    except DaemonUnavailable as exc:
        assert "restart this program" in (exc.hint or "") and __version__ in exc.message
    else:
        raise AssertionError("a client of another version got a connection")
    second = home.daemon_pid()
    assert second is not None and second != first and _alive(second)
    with home.client() as c:  # the daemon it started is the installed version, and it stays
        assert c.ping().version == __version__
    try:  # found out once: the next call is refused at once, and the daemon is left alone
        Client.connect(home.layout, expect_version="0.0.0-before-upgrade")
    except DaemonUnavailable as exc:
        assert "restart this program" in (exc.hint or "")
    else:
        raise AssertionError("a client of another version got a connection")
    assert home.daemon_pid() == second and _alive(second)
