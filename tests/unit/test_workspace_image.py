"""Staging a repository for its workspace disk (workspace.image) against real files: what goes in, what is
refused, and that the user's files are never changed (a hardlink is only ever read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.errors import InvalidArgument
from banger.workspace import image
from banger.workspace.repo import Entry


def test_files_and_symlinks_are_staged_as_they_are(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src/a.c").write_text("int a;\n")
    (root / "tool.sh").write_text("#!/bin/sh\n")
    (root / "tool.sh").chmod(0o755)
    (root / "link").symlink_to("/etc/shadow")  # a link is staged as a link, never followed
    tree = tmp_path / "tree"
    tree.mkdir()
    entries = [Entry("src/a.c", 7), Entry("tool.sh", 10), Entry("link", 0)]
    assert image.stage_files(root, entries, tree) == 17
    assert (tree / "src/a.c").read_text() == "int a;\n" and os.access(tree / "tool.sh", os.X_OK)
    assert os.readlink(tree / "link") == "/etc/shadow"
    assert os.stat(tree / "src/a.c").st_mtime == os.stat(root / "src/a.c").st_mtime


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../b", "./a", "a//b"])
def test_paths_that_are_not_plain_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "tree").mkdir()
    with pytest.raises(InvalidArgument, match="not a plain relative path"):
        image.stage_files(tmp_path, [Entry(name, 0)], tmp_path / "tree")


def test_special_files_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    os.mkfifo(root / "fifo")
    (tmp_path / "tree").mkdir()
    with pytest.raises(InvalidArgument, match="not a regular file or symlink"):
        image.stage_files(root, [Entry("fifo", 0)], tmp_path / "tree")
