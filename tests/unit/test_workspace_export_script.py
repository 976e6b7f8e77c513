"""The export scripts, run with bash and git on a real local repository (no VM): the patch they print
applies to a clone of the base and reproduces the tree, and the repository's index is left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from banger import api
from banger.client import Client
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
    # The one-pass script (the agent's export) says the same: names, then the very same patch.
    both = run(work, "sh", "-c", patch.export_script(str(work), base))
    split = patch.split_export(both)
    assert split is not None and split[:2] == (commit, paths) and both[split[2]:] == diff

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


def test_big_patches_are_read_over_the_socket_and_the_daemons_copy_goes(tmp_path: Path) -> None:
    import asyncio
    import os

    from banger.cli.workspace import write_patch
    from banger.daemon.workspace_service import WorkspaceService, _export_result

    small, big = tmp_path / "small.patch", tmp_path / "big.patch"
    small.write_bytes(b"diff --git a/x b/x\n")
    big.write_bytes(os.urandom(2 * patch.CHUNK + patch.INLINE_LIMIT + 1))
    expected = big.read_bytes()
    inline = _export_result("HEAD", "a" * 40, ["x"], small)
    assert inline.patch_b64 and inline.export_id is None and not small.exists()
    chunked = _export_result("HEAD", "a" * 40, ["x"], big)
    assert chunked.patch_b64 is None and chunked.export_id and str(big) not in chunked.model_dump_json()
    service = WorkspaceService(None, None, None)  # type: ignore[arg-type]  (read_export needs none of them)
    service._exports[chunked.export_id] = big

    class InProcess:  # the CLI's client, calling the daemon's handler without the socket in between
        export_chunks = Client.export_chunks  # the real chunk loop, over the method below

        def call_raw(self, rpc, params):  # type: ignore[no-untyped-def]  (the daemon's JSON, as the socket carries it)
            assert rpc is api.WORKSPACE_EXPORT_READ
            return asyncio.run(service.read_export(params["id"], params["offset"])).model_dump(mode="json")

    # The CLI passes the result as the daemon's plain JSON; the SDK passes the model: both read the same.
    write_patch(InProcess(), chunked.model_dump(mode="json"), str(tmp_path / "out.patch"))  # type: ignore[arg-type]
    assert (tmp_path / "out.patch").read_bytes() == expected
    assert not big.exists() and chunked.export_id not in service._exports
    write_patch(InProcess(), inline, str(tmp_path / "small-out.patch"))  # type: ignore[arg-type]
    assert (tmp_path / "small-out.patch").read_bytes() == b"diff --git a/x b/x\n"


def test_a_hostile_base_is_quoted_everywhere_it_goes(tmp_path: Path) -> None:
    """`--base-commit "x'; touch MARKER; echo '"` once ran `touch` through the error message."""
    work = tmp_path / "work"
    make_repo(work)
    marker = tmp_path / "p"
    base = f"x'; touch {marker}; echo '"
    for script in (patch.names_script(str(work), base), patch.patch_script(str(work), base)):
        proc = subprocess.run(["bash", "-c", script], capture_output=True)
        assert not marker.exists(), "the base ran as shell code"
        assert proc.returncode == patch.BAD_BASE_STATUS
        assert proc.stderr.decode() == f"banger: {base} is not a commit in the guest repository\n"
