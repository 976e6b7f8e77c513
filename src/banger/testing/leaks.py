"""What a test run leaves behind, and a sweep for runs that were killed before their fixtures ran.

Every test run gets an id (the pytest pid) and a directory ``/tmp/bt-<id>``; ``begin`` exports
``BANGER_TEST_RUN=<id>`` so that every process the run starts (CLIs, daemons, VMMs, servers) carries it in
its environment, ``BANGER_TEST_TMP`` so that test homes live in the run directory, and ``BANGER_TOOL_LOG``
so that every host program banger resolves is recorded. Network namespaces made by tests are named
``bgtest-<id>-...``. ``leftovers`` lists what is still there at the end: processes carrying the id, homes,
namespaces, mounts and loop devices under the run directory. ``sweep`` removes all of that for every run
whose pytest is gone (a run killed mid-way), so the next run starts clean.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_ENV = "BANGER_TEST_RUN"
TMP_ENV = "BANGER_TEST_TMP"
TOOL_LOG_ENV = "BANGER_TOOL_LOG"
BASE = Path("/tmp")
PREFIX = "bt-"
HOMES = "homes"


def run_dir(run_id: str) -> Path:
    return BASE / f"{PREFIX}{run_id}"


def netns_prefix(run_id: str) -> str:
    return f"bgtest-{run_id}-"


@dataclass
class Leftovers:
    """Everything a finished run should not have left."""

    processes: list[str] = field(default_factory=list)  # "pid cmdline"
    homes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.processes, self.homes, self.namespaces, self.mounts, self.loops))

    def describe(self) -> str:
        parts = [f"{name}: {values}" for name, values in vars(self).items() if values]
        return "; ".join(parts)


def begin() -> str:
    """Start a run: sweep dead runs, make this run's directory and export its environment; returns the id."""
    sweep()
    run_id = str(os.getpid())
    base = run_dir(run_id)
    shutil.rmtree(base, ignore_errors=True)
    (base / HOMES).mkdir(parents=True)
    os.environ[RUN_ENV] = run_id
    os.environ[TMP_ENV] = str(base / HOMES)
    os.environ[TOOL_LOG_ENV] = str(base / "tools.log")
    return run_id


def tool_log(run_id: str) -> list[str]:
    """Every distinct program path the run started through banger's spawner."""
    return sorted({line.split("\t", 1)[0] for line in command_log(run_id) if line})


def command_log(run_id: str) -> list[str]:
    """Every command the run's banger processes started, as ``program<TAB>shell-quoted argv`` lines."""
    try:
        return run_dir(run_id).joinpath("tools.log").read_text().splitlines()
    except FileNotFoundError:
        return []


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return True


def run_processes(run_id: str, *, exclude: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """Live processes started by run ``run_id`` (they carry its id in their environment)."""
    marker = f"{RUN_ENV}={run_id}".encode()
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [p for p in pids if p not in exclude and not _zombie(p) and _environ_has(p, marker)]


def _own_lineage() -> set[int]:
    """This process and its ancestors (they carry the marker too when a run starts another pytest)."""
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def _namespaces(prefix: str) -> list[str]:
    try:
        names = [p.name for p in Path("/run/netns").iterdir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def _mounts_under(base: Path) -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    targets = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    return sorted(t for t in targets if t == str(base) or t.startswith(str(base) + "/"))


def _loops_under(base: Path) -> list[str]:
    done = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"], capture_output=True,
                          text=True)
    out = []
    for line in done.stdout.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(str(base) + "/"):
            out.append(f"{name} {backing.strip()}")
    return out


def leftovers(run_id: str) -> Leftovers:
    """What run ``run_id`` still has on the host (call from the run itself, at its very end)."""
    base = run_dir(run_id)
    homes = base / HOMES
    return Leftovers(
        processes=[f"{p} {_cmdline(p)[:160]}" for p in run_processes(run_id, exclude=_own_lineage())],
        homes=sorted(str(p) for p in homes.iterdir()) if homes.is_dir() else [],
        namespaces=_namespaces(netns_prefix(run_id)),
        mounts=_mounts_under(base),
        loops=_loops_under(base),
    )


def remove(run_id: str, *, exclude: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """Kill, unmount, detach and delete everything of run ``run_id`` (idempotent)."""
    base = run_dir(run_id)
    for _ in range(50):
        pids = run_processes(run_id, exclude=exclude)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for name in _namespaces(netns_prefix(run_id)):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for target in reversed(_mounts_under(base)):
        subprocess.run(["umount", "-l", target], capture_output=True)
    for loop in _loops_under(base):
        subprocess.run(["losetup", "-d", loop.split()[0]], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def _alive_pytest(pid: int) -> bool:
    return not _zombie(pid) and "pytest" in _cmdline(pid)


def _marked_runs() -> set[str]:
    """Run ids found in the environment of any live process."""
    found = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                for item in (p / "environ").read_bytes().split(b"\0"):
                    if item.startswith(f"{RUN_ENV}=".encode()):
                        found.add(item.split(b"=", 1)[1].decode(errors="replace"))
    return found


def sweep() -> list[str]:
    """Remove what every dead run left (its pytest pid is gone); returns those run ids."""
    ids = {e.name[len(PREFIX):] for e in BASE.glob(f"{PREFIX}*")} | _marked_runs()
    swept = []
    for run_id in sorted(ids):
        if re.fullmatch(r"\d+", run_id) and not _alive_pytest(int(run_id)):
            remove(run_id)
            swept.append(run_id)
    return swept
