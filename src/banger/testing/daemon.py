"""Running a real bangerd and the real CLI for tests, in a throwaway ``BANGER_HOME``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from banger.client import Client
from banger.paths import Layout, layout_from_env


class Home:
    """A private BANGER_HOME (short path: Unix socket paths are limited to 108 bytes)."""

    def __init__(self, root: Path | None = None, *, netns: str | None = None):
        # Inside the test run's directory when there is one (banger.testing.leaks checks it is empty at the end).
        self.root = root or Path(tempfile.mkdtemp(prefix="bh-", dir=os.environ.get("BANGER_TEST_TMP", "/tmp")))
        self.netns = netns
        self.env = {**os.environ, "BANGER_HOME": str(self.root)}
        self.layout: Layout = layout_from_env(self.env)

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def cli_argv(self, *args: str) -> list[str]:
        """The command line of ``banger ARGS`` (inside the namespace, if any; ``ip netns exec`` execs it,
        so a signal sent to the process reaches the CLI), for a test that runs it itself."""
        return self._wrap([sys.executable, "-m", "banger.cli", *args])

    def cli(self, *args: str, check: bool = False, timeout: float = 600, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``banger ARGS`` as a subprocess (inside the namespace, if any) and capture its output."""
        argv = self.cli_argv(*args)
        proc = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"banger {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start_daemon(self, *extra: str) -> int:
        """Start bangerd directly (detached, like the CLI does) and wait for its socket; returns its pid."""
        running = self.daemon_pid()
        if running is not None and _alive(running):
            raise AssertionError(f"a bangerd (pid {running}) already serves {self.root}: a CLI call auto-started it")
        self.layout.ensure()
        log = open(self.layout.daemon_stdio_log, "ab")  # noqa: SIM115
        proc = subprocess.Popen(self._wrap([sys.executable, "-m", "banger.daemon", *extra]), env=self.env,
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.layout.socket.exists() and self.daemon_pid() == proc.pid:  # `ip netns exec` execs: same pid
                return proc.pid
            if proc.poll() is not None:
                raise AssertionError(f"bangerd exited {proc.returncode}: {self.layout.daemon_stdio_log.read_text()}")
            time.sleep(0.02)
        raise AssertionError("bangerd did not create its socket within 20s")

    def client(self, autostart: bool = False) -> Client:
        return Client.connect(self.layout, autostart=autostart)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.layout.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop_daemon(self, timeout: float = 30) -> None:
        """SIGTERM bangerd and wait for it to exit (SIGKILL after ``timeout``)."""
        pid = self.daemon_pid()
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def kill_daemon(self) -> None:
        """SIGKILL bangerd (fault tests)."""
        pid = self.daemon_pid()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)

    def cleanup(self) -> None:
        self.stop_daemon()
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
