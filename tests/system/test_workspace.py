"""Workspaces against a real guest under QEMU TCG: `vm run REPO -d`, prepare in both modes, and a round trip
of guest changes through `vm workspace export | git apply` onto a host clone, compared byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from banger.testing.daemon import Home

# A manifest of a work tree: path, kind, exec bit and sha256 of content (files) or target (symlinks).
MANIFEST = r"""
import hashlib, os, stat, sys
out = []
for d, dirs, files in os.walk("."):
    dirs[:] = [x for x in dirs if not (d == "." and x == ".git")]
    for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
        p = os.path.join(d, n)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out.append(f"l 000 {hashlib.sha256(os.fsencode(os.readlink(p))).hexdigest()} {p}")
        else:
            x = "755" if st.st_mode & 0o100 else "644"
            out.append(f"f {x} {hashlib.sha256(open(p, 'rb').read()).hexdigest()} {p}")
sys.stdout.write("\n".join(sorted(out)) + "\n")
"""

GUEST_CHANGES = r"""set -e
echo 'edited in the guest' >> README.md
git mv old-name.txt new-name.txt
rm deleted.txt
head -c 5000 /dev/urandom > 'new binary.bin'
chmod +x README.md
chmod -x tool.sh
ln -s README.md guest-link
mkdir -p 'dir with space'
printf 'hëllo wörld\n' > 'dir with space/nöuveau fichier.txt'
git add -A
git commit -q -m 'guest commit'
echo 'uncommitted edit' >> src/main.c
printf '\000\001\002\377' >> data.bin
rm link-to-readme
printf 'untracked and new\n' > untracked-new.txt
"""


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, input=input,
                          env=env).stdout.decode()


def make_repo(root: Path) -> Path:
    """A repository with history, binary, executable, symlink, odd names, an ignored and an untracked file."""
    repo = root / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Repo Person")
    git(repo, "config", "user.email", "repo@example.test")
    files = {"README.md": "# project\n", "src/main.c": "int main(void) { return 0; }\n",
             "old-name.txt": "to be renamed\n", "deleted.txt": "to be deleted\n", ".gitignore": "*.log\n"}
    for i, (name, text) in enumerate(files.items()):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
        git(repo, "add", name)
        git(repo, "commit", "-q", "-m", f"commit {i}")
    (repo / "data.bin").write_bytes(bytes(range(256)) * 40)
    (repo / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (repo / "tool.sh").chmod(0o755)
    (repo / "link-to-readme").symlink_to("README.md")
    odd = repo / "dir with space" / "naïve café.txt"
    odd.parent.mkdir()
    odd.write_text("accents\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "binary, executable, symlink, odd name")
    (repo / "build.log").write_text("ignored, never shipped\n")
    (repo / "notes.txt").write_text("untracked, shipped only with --include-untracked\n")
    return repo


def sh(home: Home, vm: str, script: str, *, check: bool = True) -> str:
    return home.cli("vm", "exec", vm, "--", script, check=check).stdout


def guest_manifest(home: Home, vm: str) -> str:
    return home.cli("vm", "exec", vm, "--", "python3", "-c", MANIFEST, check=True).stdout


def host_manifest(tree: Path) -> str:
    return subprocess.run(["python3", "-c", MANIFEST], cwd=tree, check=True, capture_output=True,
                          text=True).stdout


def round_trip(home: Home, vm: str, repo: Path, clone: Path) -> None:
    """Change the guest workspace, export, apply to a clone of HEAD: the trees must be equal."""
    sh(home, vm, GUEST_CHANGES)
    status_before = sh(home, vm, "git status --porcelain=v1 -z | od -c")
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    patch = clone.parent / f"{clone.name}.patch"
    proc = home.cli("vm", "workspace", "export", vm, "--output", str(patch))
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["git", "-C", str(clone), "apply", str(patch)], check=True, capture_output=True)
    assert host_manifest(clone) == guest_manifest(home, vm)
    assert sh(home, vm, "git status --porcelain=v1 -z | od -c") == status_before, "export left the guest alone"
    stdout_patch = home.cli("vm", "workspace", "export", vm, check=True)
    assert stdout_patch.stdout == patch.read_text(), "stdout and --output carry the same patch"


def test_workspace_round_trip_both_modes(vm_home: Home, tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD").strip()

    proc = vm_home.cli("vm", "run", str(repo), "-d", "--name", "ws", timeout=600)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(vm_home.cli("vm", "show", "ws", "--json", check=True).stdout)["workspace"]
    assert shown["guest_path"] == "/root/repo" and shown["head_commit"] == head and shown["mode"] == "shallow"

    # shallow: HEAD equals the host's, `git log -1` works, the tree is clean, nothing ignored/untracked came
    assert sh(vm_home, "ws", "git rev-parse HEAD").strip() == head
    assert sh(vm_home, "ws", "git log -1 --format=%s").strip() == "binary, executable, symlink, odd name"
    assert sh(vm_home, "ws", "git rev-parse --is-shallow-repository").strip() == "true"
    assert sh(vm_home, "ws", "git status --porcelain").strip() == ""
    assert sh(vm_home, "ws", "git symbolic-ref --short HEAD").strip() == "main"
    assert sh(vm_home, "ws", "git config user.name").strip() == "Repo Person"
    listing = set(sh(vm_home, "ws", "git ls-files; ls -A").split("\n"))
    assert "build.log" not in listing and "notes.txt" not in listing

    # dry run: lists paths and bytes, touches nothing
    dry = vm_home.cli("vm", "workspace", "prepare", "ws", str(repo), "--include-untracked", "--dry-run",
                      "--guest-path", "/root/dry", "--json", check=True)
    listed = {f["path"]: f["size"] for f in json.loads(dry.stdout)["files"]}
    assert "notes.txt" in listed and "build.log" not in listed and listed["data.bin"] == 10240
    assert vm_home.cli("vm", "exec", "ws", "--", "test -e /root/dry").returncode == 1

    round_trip(vm_home, "ws", repo, tmp_path / "clone-shallow")

    # full_copy with untracked files, on the same VM: whole history, notes.txt along, build.log still not
    proc = vm_home.cli("vm", "workspace", "prepare", "ws", str(repo), "--mode", "full_copy",
                       "--include-untracked", "--guest-path", "/root/full")
    assert proc.returncode == 0, proc.stderr
    assert sh(vm_home, "ws", "pwd").strip() == "/root/full", "vm exec runs in the recorded workspace"
    assert sh(vm_home, "ws", "git rev-parse HEAD").strip() == head
    assert int(sh(vm_home, "ws", "git rev-list --count HEAD")) == len(git(repo, "log", "--format=%s").splitlines())
    assert sh(vm_home, "ws", "git status --porcelain").strip() == "?? notes.txt"
    assert sh(vm_home, "ws", "cat notes.txt").startswith("untracked") and \
        vm_home.cli("vm", "exec", "ws", "--", "test -e build.log").returncode == 1
    round_trip(vm_home, "ws", repo, tmp_path / "clone-full")

    # preparing into a non-empty directory is refused; a guest path outside /root too
    again = vm_home.cli("vm", "workspace", "prepare", "ws", str(repo), "--guest-path", "/root/full")
    assert again.returncode == 5 and "not empty" in again.stderr, again.stderr
    big = tmp_path / "big"  # larger than the SSH window: the guest refuses while the host is still sending
    big.mkdir()
    git(big, "init", "-q")
    (big / "blob.bin").write_bytes(os.urandom(24 << 20))
    git(big, "add", "-A")
    git(big, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "-m", "big")
    again = vm_home.cli("vm", "workspace", "prepare", "ws", str(big), "--guest-path", "/root/full")
    assert again.returncode == 5 and "not empty" in again.stderr, again.stderr
    outside = vm_home.cli("vm", "workspace", "prepare", "ws", str(repo), "--guest-path", "/etc/x")
    assert outside.returncode == 2 and "/root" in outside.stderr


def test_vm_run_repository_flags_and_exec_in_the_workspace(vm_home: Home, tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / ".mise.toml").write_text('[env]\nBANGER_TOOLS = "from mise"\n')  # seen only through `mise exec`
    git(repo, "add", ".mise.toml")
    git(repo, "commit", "-q", "-m", "mise config")
    head = git(repo, "rev-parse", "HEAD").strip()
    commits = len(git(repo, "log", "--format=%s").splitlines())

    # full_copy with the untracked file, no tool bootstrap (no NAT); the command runs with mise's env
    ran = vm_home.cli("vm", "run", str(repo), "--name", "wf", "--mode", "full_copy", "--include-untracked",
                      "--no-bootstrap", "--", "git rev-list --count HEAD; git status --porcelain; echo $BANGER_TOOLS",
                      timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [str(commits), "?? notes.txt", "from mise"], ran.stdout
    assert "tool bootstrap" not in ran.stderr and "mise install" not in ran.stderr, ran.stderr

    # vm exec: in the workspace through mise, elsewhere with --guest-path; no warning while the host is at HEAD
    inside = vm_home.cli("vm", "exec", "wf", "--", "pwd; echo $BANGER_TOOLS")
    assert (inside.returncode, inside.stdout) == (0, "/root/repo\nfrom mise\n") and "warning" not in inside.stderr
    elsewhere = vm_home.cli("vm", "exec", "wf", "--guest-path", "/tmp", "--", 'pwd; echo "${BANGER_TOOLS:-none}"')
    assert (elsewhere.returncode, elsewhere.stdout) == (0, "/tmp\nnone\n"), elsewhere.stderr

    # The host moves on: one warning line, the guest as it was.
    (repo / "later.txt").write_text("committed on the host after the prepare\n")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "later")
    later = git(repo, "rev-parse", "HEAD").strip()
    behind = vm_home.cli("vm", "exec", "wf", "--", "git rev-parse HEAD")
    assert (behind.returncode, behind.stdout.strip()) == (0, head), behind.stderr
    warnings = [line for line in behind.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and head[:12] in warnings[0] and later[:12] in warnings[0], behind.stderr

    # --auto-prepare: the host's repository again, in the recorded mode, then the command
    again = vm_home.cli("vm", "exec", "wf", "--auto-prepare", "--",
                        "git rev-parse HEAD; git rev-list --count HEAD; cat later.txt", timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [later, str(commits + 1), "committed on the host after the prepare"]
    assert "warning" not in again.stderr and "workspace /root/repo <- " in again.stderr, again.stderr
    shown = json.loads(vm_home.cli("vm", "show", "wf", "--json", check=True).stdout)["workspace"]
    assert (shown["head_commit"], shown["mode"]) == (later, "full_copy")

    # A commit made in the guest stops it, and stays.
    sh(vm_home, "wf", "git commit -q --allow-empty -m 'made in the guest'")
    refused = vm_home.cli("vm", "exec", "wf", "--auto-prepare", "--", "true")
    assert refused.returncode == 5 and "would lose the commits" in refused.stderr, refused.stderr
    assert sh(vm_home, "wf", "git log -1 --format=%s").strip() == "made in the guest"

    # --branch/--from through `vm run PATH -- CMD`: a guest-only branch at an older commit, its tree checked out
    tried = vm_home.cli("vm", "run", str(repo), "--rm", "--branch", "agent/try", "--from", "HEAD~1", "--no-bootstrap",
                        "--", "git symbolic-ref --short HEAD; git rev-parse HEAD; test -e later.txt || echo no-later",
                        timeout=600)
    assert tried.returncode == 0, tried.stderr
    assert tried.stdout.splitlines() == ["agent/try", head, "no-later"], tried.stdout
    assert [v["name"] for v in json.loads(vm_home.cli("vm", "list", "--json", check=True).stdout)] == ["wf"]
