"""Export with the patch made on the host (workspace.export_host), against real git on real repositories
(no VM): a "guest" clone is changed every way a workspace can be, and the host's patch must be the very
bytes the guest's own `git add -A` + `git diff --cached --binary` print, and apply to reproduce the tree."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from banger.errors import GuestError, InvalidArgument
from banger.workspace import export_host, patch, repo


def run(cwd: Path, *argv: str, input: bytes | None = None) -> bytes:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
           "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, input=input, env=env).stdout


def host_repo(path: Path) -> str:
    path.mkdir()
    run(path, "git", "init", "-q", "-b", "main")
    files = {"a.txt": "a\n", "gone.txt": "bye\n", "same.txt": "same\n", "bin.dat": "\0\1\2" * 100,
             ".gitignore": "*.log\nbuild/\n", "tracked.log": "tracked though ignored\n", "tool.sh": "echo\n",
             "dir/deep.txt": "deep\n", "reverted.txt": "orig\n", "untracked-now.log": "kept on disk\n",
             "readded.txt": "re\n"}
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    (path / "link").symlink_to("a.txt")
    run(path, "git", "add", "-A", "-f")
    run(path, "git", "commit", "-q", "-m", "base")
    return run(path, "git", "rev-parse", "HEAD").decode().strip()


def change_guest(guest: Path) -> None:
    run(guest, "sh", "-c", """set -e
        echo committed > committed.txt; git add committed.txt; git rm -q gone.txt
        echo changed-then-reverted > reverted.txt; git add reverted.txt; git commit -q -m guest
        echo orig > reverted.txt
        echo edited >> a.txt
        printf '\\377\\376' >> bin.dat
        echo more >> tracked.log
        chmod +x tool.sh
        rm dir/deep.txt
        echo new > 'new file é.txt'
        echo ignored > ignored.log; mkdir -p build; echo out > build/x
        ln -sf same.txt link
        echo staged > staged.txt; git add staged.txt
        ln a.txt hard-link.txt; git add hard-link.txt
        git rm -q --cached untracked-now.log
        git rm -q readded.txt; git commit -q -m 'drop readded'; echo back > readded.txt; git add readded.txt
    """)


def test_host_patch_equals_the_guest_patch(tmp_path: Path) -> None:
    host = tmp_path / "host"
    base = host_repo(host)
    guest = tmp_path / "guest"
    subprocess.run(["git", "clone", "-q", str(host), str(guest)], check=True)
    change_guest(guest)
    status = run(guest, "git", "status", "--porcelain")
    want = run(guest, "sh", "-c", patch.patch_script(str(guest), base))
    out = run(guest, "sh", "-c", export_host.changes_script(str(guest), base))
    assert run(guest, "git", "status", "--porcelain") == status, "the guest repo is left as it was"

    info = asyncio.run(repo.inspect(host))
    dest = tmp_path / "out.patch"
    got_base, names = asyncio.run(export_host.make_patch(info, io.BytesIO(out), tmp_path / "scratch", dest))
    assert got_base == base
    assert dest.read_bytes() == want
    assert "ignored.log" not in names and "build/x" not in names and "same.txt" not in names
    assert {"a.txt", "gone.txt", "committed.txt", "dir/deep.txt", "new file é.txt", "staged.txt",
            "tracked.log", "tool.sh", "link", "bin.dat"} <= set(names)
    assert "reverted.txt" not in names
    assert "untracked-now.log" in names, "out of the index and ignored: git add -A would not add it back"

    applied = tmp_path / "applied"
    subprocess.run(["git", "clone", "-q", str(host), str(applied)], check=True)
    run(applied, "git", "apply", input=dest.read_bytes())
    for name in ("a.txt", "bin.dat", "committed.txt", "new file é.txt", "staged.txt", "tracked.log",
                 "hard-link.txt"):
        assert (applied / name).read_bytes() == (guest / name).read_bytes()
    assert not (applied / "gone.txt").exists() and os.readlink(applied / "link") == "same.txt"

    # Staged ahead (as the daemon does while the guest sends), over the right base or a stale one: same bytes.
    async def ahead(commit: str, n: int) -> bytes:
        staged = await export_host.stage_base(info, commit, tmp_path / f"ahead-{n}")
        again = tmp_path / f"again-{n}.patch"
        assert (await export_host.make_patch(info, io.BytesIO(out), tmp_path / f"s-{n}", again, staged))[0] == base
        return again.read_bytes()

    assert asyncio.run(ahead(base, 1)) == want
    other = run(host, "git", "commit-tree", f"{base}^{{tree}}", "-m", "another commit").decode().strip()
    assert asyncio.run(ahead(other, 2)) == want  # staged over another commit: redone over the guest's base
    with pytest.raises(InvalidArgument, match="no longer has the base"):
        asyncio.run(export_host.stage_base(info, "1" * 40, tmp_path / "ahead-3"))
    assert os.access(applied / "tool.sh", os.X_OK)
    assert run(host, "git", "status", "--porcelain") == b"", "the host repository is not touched"


def _stream(base: str, names: list[str], members: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    # base, then the four lists (commits, files, index, untracked), the names as changed work-tree files
    buf.write(base.encode() + b"\0" + b"\0" + b"".join(n.encode() + b"\0" for n in names) + b"\0" + b"\0\0")
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.mark.parametrize("names, members, message", [
    (["a.txt"], {"a.txt": b"x" * 10}, None),
    (["a.txt"], {"../escape": b"x"}, "did not list"),
    (["a.txt"], {"other.txt": b"x"}, "did not list"),
    (["../escape"], {}, "outside its work tree"),
    ([".git/config"], {}, "outside its work tree"),
    (["/etc/passwd"], {}, "outside its work tree"),
])
def test_hostile_change_lists_are_refused(tmp_path: Path, names: list[str], members: dict[str, bytes],
                                          message: str | None) -> None:
    host = tmp_path / "host"
    base = host_repo(host)
    info = asyncio.run(repo.inspect(host))
    if message is None:  # the well-formed stream this helper makes is read as meant
        got = asyncio.run(export_host.make_patch(info, _stream(base, names, members), tmp_path / "s", tmp_path / "p"))
        assert got == (base, ["a.txt"]) and b"+xxxxxxxxxx" in (tmp_path / "p").read_bytes()
        return
    with pytest.raises(GuestError, match=message):
        asyncio.run(export_host.make_patch(info, _stream(base, names, members), tmp_path / "s", tmp_path / "p"))
    assert not (tmp_path / "escape").exists()


def test_a_base_the_host_lacks_is_said_plainly(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host_repo(host)
    info = asyncio.run(repo.inspect(host))
    with pytest.raises(Exception, match="no longer has the base commit"):
        asyncio.run(export_host.make_patch(info, _stream("1" * 40, [], {}), tmp_path / "s", tmp_path / "p"))


@pytest.mark.parametrize("lists, message", [
    (b"X\0a.txt\0\0\0\0\0", "unknown status"),
    (b"M\0\0\0\0\0", "malformed status list"),
    (b"\0\0\0", "ended early"),
])
def test_malformed_status_lists_are_refused(tmp_path: Path, lists: bytes, message: str) -> None:
    with pytest.raises(GuestError, match=message):
        export_host.read_header(io.BytesIO(b"1" * 40 + b"\0" + lists))


def test_a_nested_repository_leaves_the_patch_to_the_guest(tmp_path: Path) -> None:
    host = tmp_path / "host"
    base = host_repo(host)
    guest = tmp_path / "guest"
    subprocess.run(["git", "clone", "-q", str(host), str(guest)], check=True)
    run(guest, "git", "init", "-q", "nested")
    (guest / "nested" / "f").write_text("x\n")
    out = run(guest, "sh", "-c", export_host.changes_script(str(guest), base))
    info = asyncio.run(repo.inspect(host))
    with pytest.raises(export_host.GuestPatchNeeded):
        asyncio.run(export_host.make_patch(info, io.BytesIO(out), tmp_path / "s", tmp_path / "p"))


def test_a_big_patch_made_in_two_halves_is_the_guest_s_patch(tmp_path: Path) -> None:
    """Past 64 paths the host diffs two halves side by side (and packs the blobs): still the guest's bytes,
    including when a file became a directory where the halves would meet (its pathspec would match both:
    the diff is then made whole)."""
    host = tmp_path / "host"
    host.mkdir()
    run(host, "git", "init", "-q", "-b", "main")
    for i in range(150):
        (host / f"f{i:03d}.{'bin' if i % 3 == 0 else 'txt'}").write_bytes(bytes(range(256)) * 4 if i % 3 == 0
                                                                          else f"line {i}\n".encode() * 50)
    (host / "f074z").write_text("a file first\n")  # sorts right where the halves would meet
    (host / os.fsdecode(b"f\xff\xfe.txt")).write_text("not UTF-8\n")  # a tracked name that is not UTF-8
    (host / "same.txt").write_text("same\n")
    run(host, "git", "add", "-A")
    run(host, "git", "commit", "-q", "-m", "base")
    base = run(host, "git", "rev-parse", "HEAD").decode().strip()
    info = asyncio.run(repo.inspect(host))

    def exported(change: str, n: int) -> tuple[bytes, bytes, list[str]]:
        guest = tmp_path / f"guest-{n}"
        subprocess.run(["git", "clone", "-q", str(host), str(guest)], check=True)
        run(guest, "sh", "-c", change)
        want = run(guest, "sh", "-c", patch.patch_script(str(guest), base))
        out = run(guest, "sh", "-c", export_host.changes_script(str(guest), base))
        dest = tmp_path / f"out-{n}.patch"
        names = asyncio.run(export_host.make_patch(info, io.BytesIO(out), tmp_path / f"s-{n}", dest))[1]
        return dest.read_bytes(), want, names

    edit_all = "for f in f*; do printf 'x\\001\\377' >> \"$f\"; done; echo new > 'new é.txt'"
    got, want, names = exported(edit_all, 1)
    assert got == want and len(names) == 153 and "same.txt" not in names
    assert b"deleted file" not in got, "the name that is not UTF-8 is a modification, as in the guest's patch"
    assert len(export_host._halves(names) or ()) == 2, "this export was made in halves"

    got, want, names = exported(edit_all + "; rm f074z; mkdir f074z; echo in > f074z/inner; echo a > a-added", 2)
    assert got == want
    middle = len(names) // 2
    assert names[middle - 1:middle + 1] == ["f074z", "f074z/inner"], "the file-became-directory straddles the cut"
    assert export_host._halves(names) is None
    applied = tmp_path / "applied"
    subprocess.run(["git", "clone", "-q", str(host), str(applied)], check=True)
    run(applied, "git", "apply", input=got)
    assert (applied / "f074z" / "inner").read_text() == "in\n"
