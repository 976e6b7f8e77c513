"""The export scripts, run with bash and git on a real local repository (no VM): the patch they print
applies to a clone of the base and reproduces the tree, and the repository's index is left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from banger.workspace import patch


def run(cwd: Path, *argv: str, input: bytes | None = None) -> bytes:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, input=input).stdout


def make_repo(path: Path) -> str:
    path.mkdir()
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "git", "config", "user.name", "T")
    run(path, "git", "config", "user.email", "t@example.test")
    (path / "a.txt").write_text("a\n")
    (path / "gone.txt").write_text("bye\n")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-q", "-m", "base")
    return run(path, "git", "rev-parse", "HEAD").decode().strip()


def test_patch_carries_commits_edits_and_untracked(tmp_path: Path) -> None:
    work = tmp_path / "work"
    base = make_repo(work)
    (work / "committed.bin").write_bytes(bytes(range(256)))
    run(work, "git", "add", "-A")
    run(work, "git", "commit", "-q", "-m", "later")
    (work / "a.txt").write_text("a\nedited\n")
    (work / "gone.txt").unlink()
    (work / "new file é.txt").write_text("new\n")
    (work / "staged.txt").write_text("staged\n")
    run(work, "git", "add", "staged.txt")
    status = run(work, "git", "status", "--porcelain")
    index = (work / ".git" / "index").read_bytes()

    names = run(work, "bash", "-c", patch.names_script(str(work), base))
    commit, paths = patch.parse_names(names)
    assert commit == base
    assert sorted(paths) == ["a.txt", "committed.bin", "gone.txt", "new file é.txt", "staged.txt"]
    diff = run(work, "bash", "-c", patch.patch_script(str(work), base))

    assert run(work, "git", "status", "--porcelain") == status
    assert (work / ".git" / "index").read_bytes() == index, "the real index is never written"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(work), str(clone)], check=True)
    run(clone, "git", "checkout", "-q", base)
    run(clone, "git", "apply", input=diff)
    for name in ("a.txt", "committed.bin", "new file é.txt", "staged.txt"):
        assert (clone / name).read_bytes() == (work / name).read_bytes()
    assert not (clone / "gone.txt").exists()


def test_bad_base_exits_with_its_own_status(tmp_path: Path) -> None:
    work = tmp_path / "work"
    make_repo(work)
    proc = subprocess.run(["bash", "-c", patch.names_script(str(work), "no-such-ref")], capture_output=True)
    assert proc.returncode == patch.BAD_BASE_STATUS and b"not a commit" in proc.stderr


def test_big_patches_go_through_a_file_that_the_cli_streams_and_removes(tmp_path: Path) -> None:
    import os

    from banger.cli.workspace import write_patch
    from banger.daemon.workspace_service import _export_result

    small, big = tmp_path / "small.patch", tmp_path / "big.patch"
    small.write_bytes(b"diff --git a/x b/x\n")
    big.write_bytes(os.urandom(patch.INLINE_LIMIT + 1))
    inline = _export_result("HEAD", "a" * 40, ["x"], small)
    assert inline.patch_b64 and inline.patch_path is None and not small.exists()
    by_file = _export_result("HEAD", "a" * 40, ["x"], big)
    assert by_file.patch_b64 is None and by_file.patch_path == str(big)
    expected = big.read_bytes()
    write_patch(by_file, str(tmp_path / "out.patch"))
    assert (tmp_path / "out.patch").read_bytes() == expected and not big.exists()
    write_patch(inline, str(tmp_path / "small-out.patch"))
    assert (tmp_path / "small-out.patch").read_bytes() == b"diff --git a/x b/x\n"
