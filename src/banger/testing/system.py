"""A system install for tests: a user made for the test, ``banger system install --prefix``, and both daemons
started exactly as the written units' ``ExecStart=`` lines say (these machines have no systemd as PID 1).

The owner daemon runs as the unit's ``User=`` through ``setpriv`` (no supplementary groups, as systemd
would without ``SupplementaryGroups=``); the CLI runs as that user too, with ``BANGER_INSTALL`` pointing at
the prefix's install.toml.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from banger.install import Install, read_install
from banger.sysinstall import answers

USER = "bangertest"  # one fixed name: a killed run's user is simply reused by the next


@contextmanager
def made_user(name: str = USER) -> Iterator[pwd.struct_passwd]:
    """A normal account with no home and no login shell, deleted afterwards."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False, capture_output=True)


def unit_service(text: str) -> dict[str, str]:
    """The ``[Service]`` keys of a unit file (last one wins, as systemd reads single-valued keys)."""
    keys: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key] = value
    return keys


class SystemInstall:
    """``banger system install --owner USER --prefix DIR`` and its two daemons, for one test."""

    def __init__(self, owner: str, *, netns: str | None = None):
        base = os.environ.get("BANGER_TEST_TMP", "/tmp")
        self.prefix = Path(tempfile.mkdtemp(prefix="sys-", dir=base))
        os.chmod(self.prefix, 0o755)  # the owner walks through it to its state dir
        for parent in self.prefix.parents:  # the run's dirs are root's 0700 by default: let the owner through
            if str(parent).startswith("/tmp/") and parent.stat().st_mode & 0o001 == 0:
                os.chmod(parent, parent.stat().st_mode | 0o011)
        self.owner = owner
        self.netns = netns
        self.record = self.prefix / "etc/banger/install.toml"
        self.env = {**os.environ, "BANGER_INSTALL": str(self.record), "HOME": str(self.prefix)}
        self.env.pop("BANGER_HOME", None)
        tool_log = os.environ.get("BANGER_TOOL_LOG")
        if tool_log:  # the run records every program its processes resolve, the owner's included
            Path(tool_log).touch()
            os.chmod(tool_log, 0o666)
        self.helper: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    def install(self) -> subprocess.CompletedProcess[str]:
        return self.root_cli("system", "install", "--owner", self.owner, "--prefix", str(self.prefix), check=True)

    @property
    def inst(self) -> Install:
        inst = read_install(self.record)
        assert inst is not None, f"no install at {self.record}"
        return inst

    def unit(self, name: str) -> dict[str, str]:
        return unit_service((self.inst.units_dir / name).read_text())

    def _wrap(self, argv: Sequence[str], netns: str | None) -> list[str]:
        return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.owner}", f"--regid={self.owner}", "--clear-groups", *argv]

    def root_cli(self, *args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self._cli(list(args), as_owner=False, check=check, timeout=timeout)

    def cli(self, *args: str, check: bool = False, timeout: float = 600, cwd: Path | None = None,
            netns: str | None | bool = True) -> subprocess.CompletedProcess[str]:
        """``banger ARGS`` as the owner (inside the namespace unless ``netns=False``)."""
        return self._cli(list(args), as_owner=True, check=check, timeout=timeout, cwd=cwd, netns=netns)

    def cli_background(self, *args: str) -> subprocess.Popen[str]:
        """``banger ARGS`` as the owner inside the namespace, not waited for (fault tests)."""
        argv = self._wrap(self._as_owner([sys.executable, "-m", "banger.cli", *args]), self.netns)
        return subprocess.Popen(argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, cwd=self.prefix)

    def _cli(self, args: list[str], *, as_owner: bool, check: bool, timeout: float, cwd: Path | None = None,
             netns: str | None | bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "banger.cli", *args]
        if as_owner:
            argv = self._as_owner(argv)
        argv = self._wrap(argv, self.netns if netns is True else (netns or None))
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=cwd or self.prefix)
        if check and proc.returncode != 0:
            raise AssertionError(f"banger {shlex.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    # --- the daemons, as the units say --------------------------------------------------------------

    def start_helper(self) -> subprocess.Popen[bytes]:
        unit = self.unit("bangerd-root.service")
        assert "User" not in unit, "bangerd-root runs as root"
        self.helper = self._start(shlex.split(unit["ExecStart"]), self.inst.root_socket, self.netns, "helper")
        return self.helper

    def start_owner_daemon(self, *, netns: str | None | bool = True) -> subprocess.Popen[bytes]:
        unit = self.unit("bangerd.service")
        assert unit["User"] == self.owner
        where = self.netns if netns is True else (netns or None)
        # As the unit confines it: NoNewPrivileges=yes, CapabilityBoundingSet= (empty), AmbientCapabilities=.
        assert unit["NoNewPrivileges"] == "yes" and unit["CapabilityBoundingSet"] == ""
        confined = ["--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"]
        argv = self._as_owner([*confined, *shlex.split(unit["ExecStart"])])
        self.daemon = self._start(argv, self.inst.layout.socket, where, "daemon")
        return self.daemon

    def _start(self, argv: list[str], sock: Path, netns: str | None, what: str) -> subprocess.Popen[bytes]:
        log = open(self.prefix / f"{what}.out", "ab")  # noqa: SIM115
        proc = subprocess.Popen(self._wrap(argv, netns), env=self.env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sock.exists() and answers(sock):
                return proc
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited {proc.returncode}: {(self.prefix / f'{what}.out').read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"{what} did not answer on {sock} within 20s")

    def stop(self, proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def logs(self) -> str:
        """What to show when a test fails: both daemons' output and the owner daemon's log tail."""
        parts = []
        for name in ("helper.out", "daemon.out", "var/lib/banger/bangerd.log", "run/banger-root/bangerd-root.log"):
            path = self.prefix / name
            if path.is_file():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    def close(self) -> None:
        self.stop(self.daemon)
        self.stop(self.helper)
        shutil.rmtree(self.prefix, ignore_errors=True)

