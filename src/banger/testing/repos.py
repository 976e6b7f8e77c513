"""Small real git repositories for tests (host git, as the test's user)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(cwd: Path, *args: str) -> str:
    """``git -C cwd ARGS`` stdout; raises on failure."""
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout


def committed_repo(path: Path) -> Path:
    """A repo at ``path`` with one commit (src/a.py, .gitignore), an ignored debug.log and an untracked file."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Repo Person")
    git(path, "config", "user.email", "repo@example.test")
    (path / "src").mkdir()
    (path / "src" / "a.py").write_text("print('a')\n")
    (path / ".gitignore").write_text("*.log\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    (path / "debug.log").write_text("ignored\n")
    (path / "scratch.txt").write_text("untracked\n")
    return path
