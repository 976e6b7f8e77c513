"""Host git runs nothing a repository names: a real repo whose config asks for fsmonitor, hooks, an ssh
command and filter/diff drivers, inspected through the real CLI and daemon and through banger.workspace."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from banger.testing.daemon import Home
from banger.testing.repos import committed_repo, git
from banger.workspace import repo


@pytest.fixture
def booby_trapped(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose own config runs a script (that leaves a marker) from every hook git offers."""
    marks = tmp_path / "marks"
    marks.mkdir()
    r = committed_repo(tmp_path / "trap")
    script = tmp_path / "payload"
    script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marks}/ran\nexit 0\n")
    script.chmod(0o755)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("post-checkout", "post-index-change", "reference-transaction", "pre-auto-gc"):
        (hooks / hook).symlink_to(script)
    (r / ".gitattributes").write_text("* filter=evil diff=evil\n")
    git(r, "add", ".gitattributes")
    git(r, "commit", "-q", "-m", "attrs")
    for key, value in (("core.fsmonitor", str(script)), ("core.hooksPath", str(hooks)),
                       ("core.sshCommand", str(script)), ("core.pager", str(script)),
                       ("diff.external", str(script)), ("filter.evil.clean", str(script)),
                       ("filter.evil.smudge", str(script)), ("filter.evil.process", str(script)),
                       ("filter.evil.required", "true"), ("diff.evil.textconv", str(script)),
                       ("core.untrackedCache", "true")):
        git(r, "config", key, value)
    (r / "src" / "a.py").write_text("changed\n")  # a dirty work tree: ls-files consults fsmonitor
    (marks / "ran").unlink(missing_ok=True)
    return r, marks


def test_dry_run_prepare_runs_nothing_the_repo_names(home: Home, booby_trapped: tuple[Path, Path]) -> None:
    r, marks = booby_trapped
    home.start_daemon()
    proc = home.cli("vm", "workspace", "prepare", "nosuchvm", str(r), "--dry-run", "--include-untracked")
    assert proc.returncode == 3 and "nosuchvm" in proc.stderr
    ok = home.cli("vm", "workspace", "prepare", "nosuchvm", str(r), "--dry-run", "--json")
    assert ok.returncode == 3
    assert not (marks / "ran").exists(), (marks / "ran").read_text()


async def test_every_repo_query_runs_nothing_the_repo_names(booby_trapped: tuple[Path, Path]) -> None:
    r, marks = booby_trapped
    info = await repo.inspect(r)
    assert {"filter.evil.clean", "filter.evil.smudge", "filter.evil.process", "diff.evil.textconv"} <= \
        set(info.drivers)
    entries = await repo.work_tree_entries(info, include_untracked=True, recurse_submodules=True)
    assert {e.path for e in entries} >= {"src/a.py", ".gitattributes", "scratch.txt"}
    assert await repo.resolve_commit(info, "HEAD") == info.head
    await repo.check_branch_name(info, "agent/try-1")
    assert await repo.history_bytes(info, info.head) > 0
    # The same repository really does run the payload when git is used the ordinary way:
    subprocess.run(["git", "-C", str(r), "status", "--short"], capture_output=True, check=False)
    ran = (marks / "ran").read_text() if (marks / "ran").exists() else ""
    assert ran, "the trap must be live, or this test proves nothing"
    (marks / "ran").unlink()
    await repo.inspect(r)
    assert not (marks / "ran").exists()
