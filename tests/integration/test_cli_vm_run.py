"""`vm run PATH` and its repository flags through the real CLI and a real bangerd: usage errors without
PATH, `--dry-run` that makes no VM, and the refusal of a mise config the VM could not install for; what
`vm exec` checks before it reaches a guest (the workspace behind the host's HEAD, its own flags)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.daemon.image_service import DEFAULT_SETTING
from banger.model import Workspace
from banger.store.db import open_db
from banger.store.repo import Store
from banger.testing.artifacts import seed_stopped_vms
from banger.testing.daemon import Home
from banger.testing.netns import NetNS
from banger.testing.repos import committed_repo, git

# Should a create slip past a check, it fails at once: QEMU, no Firecracker, a default image that does not exist.
CONFIG = 'default_image_name = "no-such-image"\nruntime = "qemu"\nfirecracker_bin = "/nonexistent/firecracker"\n'


@pytest.fixture
def guarded() -> Iterator[Home]:
    with NetNS() as ns:  # a bridge or TAP made by a create that slipped through stays in here
        home = Home(netns=ns.name)
        try:
            home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
            home.layout.config_file.write_text(CONFIG)
            store = Store(open_db(home.layout.db))
            store.set_setting(DEFAULT_SETTING, "no-default-image")
            store.close()
            home.start_daemon()
            yield home
        finally:
            home.cleanup()


def no_vm_was_made(home: Home) -> bool:
    with home.client() as c:
        return c.vm_list() == [] and c.operations() == []


@pytest.mark.parametrize("flags", [("--mode", "full_copy"), ("--include-untracked",), ("--branch", "try"),
                                   ("--from", "HEAD"), ("--dry-run",), ("--no-bootstrap",)])
def test_repository_flags_need_a_path(home: Home, flags: tuple[str, ...]) -> None:
    proc = home.cli("vm", "run", *flags, "--", "true")
    assert proc.returncode == 2, proc.stderr
    assert f"{flags[0]} applies to a repository: banger vm run PATH" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and home.daemon_pid() is None, "refused before asking the daemon"


def test_from_needs_branch(home: Home, tmp_path: Path) -> None:
    repo = committed_repo(tmp_path / "repo")
    proc = home.cli("vm", "run", str(repo), "--from", "HEAD", "--", "true")
    assert proc.returncode == 2 and "--from needs --branch" in proc.stderr, proc.stderr
    assert home.daemon_pid() is None


def test_dry_run_lists_what_would_ship_and_makes_no_vm(guarded: Home, tmp_path: Path) -> None:
    repo = committed_repo(tmp_path / "repo")  # scratch.txt untracked, debug.log ignored
    dry = guarded.cli("vm", "run", str(repo), "--dry-run", "--", "make", "test")
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[-1] for line in dry.stdout.splitlines()] == [".gitignore", "src/a.py"]
    assert "2 files" in dry.stderr and "dry run: nothing was sent" in dry.stderr, dry.stderr
    untracked = guarded.cli("vm", "run", str(repo), "--include-untracked", "--mode", "full_copy", "--dry-run")
    assert untracked.returncode == 0, untracked.stderr
    assert sorted(line.split()[-1] for line in untracked.stdout.splitlines()) == [".gitignore", "scratch.txt",
                                                                                 "src/a.py"]
    branch = guarded.cli("vm", "run", str(repo), "--branch", "no..good", "--dry-run")
    assert branch.returncode == 2 and "not a valid git branch name" in branch.stderr, branch.stderr
    assert no_vm_was_made(guarded)


@pytest.mark.parametrize("config", [".mise.toml", ".tool-versions"])
def test_a_mise_config_without_nat_is_refused_before_any_vm(guarded: Home, tmp_path: Path, config: str) -> None:
    repo = committed_repo(tmp_path / "repo")
    (repo / config).write_text('[tools]\njq = "1.7"\n' if config == ".mise.toml" else "jq 1.7\n")
    untracked = guarded.cli("vm", "run", str(repo), "--dry-run")  # not shipped, so no bootstrap: not refused
    assert untracked.returncode == 0, untracked.stderr
    for args in (["--", "true"], ["--dry-run"], ["--include-untracked", "-d"]):
        refused = guarded.cli("vm", "run", str(repo), "--include-untracked", *args)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert lines[0] == f"error: {repo} has {config}, but `mise install` in the guest needs the network and " \
                           "the VM would have none", refused.stderr
        assert "--nat" in lines[1] and "--no-bootstrap" in lines[1] and len(lines) == 2, refused.stderr
    git(repo, "add", config)
    git(repo, "commit", "-q", "-m", "tools")
    assert guarded.cli("vm", "run", str(repo), "--", "true").returncode == 2
    for passing in ("--no-bootstrap", "--nat"):
        dry = guarded.cli("vm", "run", str(repo), passing, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert config in [line.split()[-1] for line in dry.stdout.splitlines()]
    assert no_vm_was_made(guarded)


def test_exec_warns_when_the_host_moved_on_and_checks_its_flags(guarded: Home, tmp_path: Path) -> None:
    repo = committed_repo(tmp_path / "repo")
    prepared = git(repo, "rev-parse", "HEAD").strip()
    guarded.stop_daemon()
    seed_stopped_vms(guarded.layout, {"a1b2c3d4e5f6": "ws", "b1b2c3d4e5f6": "bare"})
    store = Store(open_db(guarded.layout.db))
    store.update_vm(store.get_vm("ws"), workspace=Workspace(guest_path="/root/repo", host_path=str(repo),
                                                             head_commit=prepared))
    store.close()
    guarded.start_daemon()

    def warnings(ref: str) -> list[str]:
        proc = guarded.cli("vm", "exec", ref, "--", "true")
        assert proc.returncode == 5 and "not running" in proc.stderr, proc.stderr  # stopped: no guest to reach
        return [line for line in proc.stderr.splitlines() if line.startswith("warning:")]

    assert warnings("ws") == [] and warnings("bare") == []
    git(repo, "commit", "-q", "--allow-empty", "-m", "later")
    later = git(repo, "rev-parse", "HEAD").strip()
    assert warnings("ws") == [f"warning: /root/repo in VM ws was prepared at {prepared[:12]}, {repo} is now at "
                              f"{later[:12]} (--auto-prepare copies it again first)"]

    bare = guarded.cli("vm", "exec", "bare", "--auto-prepare", "--", "true")
    assert bare.returncode == 2 and "VM 'bare' has no workspace to prepare again" in bare.stderr, bare.stderr
    odd = guarded.cli("vm", "exec", "ws", "--guest-path", "/root/a\nb", "--", "true")
    assert odd.returncode == 2 and "control characters" in odd.stderr, odd.stderr
