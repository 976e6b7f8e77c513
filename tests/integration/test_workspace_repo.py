"""Host repository inspection with real git, and `vm workspace prepare --dry-run` / `vm run PATH` through a
real daemon: repos in states prepare refuses fail with a clear message before any VM work."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from banger.errors import InvalidArgument
from banger.testing.daemon import Home
from banger.testing.repos import committed_repo, git
from banger.workspace import repo


async def test_inspect_a_normal_repo_from_a_subdirectory(tmp_path: Path) -> None:
    r = committed_repo(tmp_path / "r")
    info = await repo.inspect(r / "src")
    assert info.root == r and info.git_dir == r / ".git" and info.branch == "main"
    assert info.head == git(r, "rev-parse", "HEAD").strip()
    assert info.identity == {"user.name": "Repo Person", "user.email": "repo@example.test"}
    tracked = await repo.work_tree_entries(info, include_untracked=False, recurse_submodules=False)
    assert sorted(e.path for e in tracked) == [".gitignore", "src/a.py"]
    everything = await repo.work_tree_entries(info, include_untracked=True, recurse_submodules=False)
    assert sorted(e.path for e in everything) == [".gitignore", "scratch.txt", "src/a.py"]
    assert {e.path: e.size for e in everything}["src/a.py"] == len("print('a')\n")


async def test_detached_head_is_fine_and_deleted_files_are_skipped(tmp_path: Path) -> None:
    r = committed_repo(tmp_path / "r")
    git(r, "checkout", "-q", "--detach")
    (r / "src" / "a.py").unlink()
    info = await repo.inspect(r)
    assert info.branch is None
    assert [e.path for e in await repo.work_tree_entries(info, include_untracked=False,
                                                         recurse_submodules=False)] == [".gitignore"]


@pytest.mark.parametrize(("state", "message"), [
    ("missing", "does not exist"), ("plain", "not inside a git repository"),
    ("bare", "bare repository"), ("empty", "has no commits yet"),
])
async def test_refused_states(tmp_path: Path, state: str, message: str) -> None:
    target = tmp_path / state
    if state == "plain":
        target.mkdir()
    elif state == "bare":
        subprocess.run(["git", "init", "-q", "--bare", str(target)], check=True)
    elif state == "empty":
        subprocess.run(["git", "init", "-q", str(target)], check=True)
    with pytest.raises(InvalidArgument, match=message):
        await repo.inspect(target)


async def test_submodules_are_found(tmp_path: Path) -> None:
    sub = committed_repo(tmp_path / "sub")
    top = committed_repo(tmp_path / "top")
    subprocess.run(["git", "-C", str(top), "-c", "protocol.file.allow=always", "submodule", "add", "-q",
                    str(sub), "vendor/sub"], check=True, capture_output=True)
    git(top, "commit", "-q", "-m", "add submodule")
    info = await repo.inspect(top)
    assert info.submodules == ("vendor/sub",)
    full = await repo.work_tree_entries(info, include_untracked=False, recurse_submodules=True)
    paths = {e.path for e in full}
    assert {"vendor/sub/src/a.py", "vendor/sub/.git", ".gitmodules"} <= paths and "vendor/sub" not in paths


def test_dry_run_through_the_daemon(home: Home, tmp_path: Path) -> None:
    r = committed_repo(tmp_path / "r")
    home.start_daemon()  # first: a CLI call before it would auto-start one of its own
    proc = home.cli("vm", "workspace", "prepare", "nosuchvm", str(r), "--dry-run")
    assert proc.returncode == 3 and "nosuchvm" in proc.stderr, "a dry run still names a missing VM"
    with home.client() as c:
        from banger import api

        res = c.vm_workspace_prepare(api.WorkspacePrepare(path=str(r), dry_run=True, include_untracked=True))
    assert res.dry_run and res.workspace is None and res.host_root == str(r)
    assert sorted(f.path for f in res.files) == [".gitignore", "scratch.txt", "src/a.py"]
    assert res.file_bytes == sum(f.size for f in res.files) and res.history_bytes > 0
    assert res.head_commit == git(r, "rev-parse", "HEAD").strip()


def test_shallow_refuses_submodules_and_linked_worktrees_refuse_full_copy(home: Home, tmp_path: Path) -> None:
    sub = committed_repo(tmp_path / "sub")
    top = committed_repo(tmp_path / "top")
    subprocess.run(["git", "-C", str(top), "-c", "protocol.file.allow=always", "submodule", "add", "-q",
                    str(sub), "sub"], check=True, capture_output=True)
    git(top, "commit", "-q", "-m", "sub")
    home.start_daemon()
    with home.client() as c:
        from banger import api

        with pytest.raises(InvalidArgument, match="submodules"):
            c.vm_workspace_prepare(api.WorkspacePrepare(path=str(top), dry_run=True))
        assert c.vm_workspace_prepare(api.WorkspacePrepare(path=str(top), dry_run=True, mode="full_copy")).files
        git(sub, "worktree", "add", "-q", str(tmp_path / "linked"))
        with pytest.raises(InvalidArgument, match="linked worktree"):
            c.vm_workspace_prepare(api.WorkspacePrepare(path=str(tmp_path / "linked"), dry_run=True,
                                                        mode="full_copy"))


@pytest.mark.parametrize("state", ["plain", "missing"])
def test_vm_run_with_a_bad_path_fails_before_any_vm(home: Home, tmp_path: Path, state: str) -> None:
    target = tmp_path / state
    if state == "plain":
        target.mkdir()
    proc = home.cli("vm", "run", str(target), "-d", "--name", "never")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(target) in proc.stderr
    assert json.loads(home.cli("vm", "list", "--json", check=True).stdout) == []


def test_cli_flags_are_checked(home: Home, tmp_path: Path) -> None:
    r = committed_repo(tmp_path / "r")
    proc = home.cli("vm", "workspace", "prepare", "x", str(r), "--from", "HEAD")
    assert proc.returncode == 2 and "--branch" in proc.stderr
    proc = home.cli("vm", "workspace", "prepare", "x", str(r), "--branch", "bad..name", "--dry-run")
    assert proc.returncode == 2 and "branch name" in proc.stderr, proc.stderr
