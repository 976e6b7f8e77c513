"""The Python SDK against a real daemon and real VMs under QEMU TCG: create with a repo, exec, export the
patch and apply it on the host, list/show/logs/ports/ssh_info, delete; `run` of a one-off command; errors
raised as banger's exception tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import banger
from banger import Client
from banger.errors import InvalidArgument, NotFound
from banger.testing.daemon import Home


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, input=input).stdout.decode()


def small_repo(root: Path) -> Path:
    repo = root / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "SDK Test")
    git(repo, "config", "user.email", "sdk@example.invalid")
    (repo / "hello.txt").write_text("hello from the host\n")
    (repo / "test.sh").write_text("#!/bin/sh\ngrep -q host hello.txt && echo tests-pass\n")
    (repo / "test.sh").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def sdk(home: Home) -> Client:
    """The SDK on the test's daemon, which the CLI starts inside the test's network namespace."""
    home.cli("daemon", "status", check=True)
    return Client(home.client())


def test_sdk_round_trip(vm_home: Home, tmp_path: Path) -> None:
    repo = small_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD").strip()
    assert banger.Client is Client  # `from banger import Client` is the SDK
    with sdk(vm_home) as bg:
        seen: list[str] = []
        created = bg.create(name="sdk", workspace=repo, progress=lambda op: seen.append(op.state))
        assert created.vm.name == "sdk" and created.vm.state == "running" and created.runtime_note
        assert seen[-1] == "succeeded" and len(seen) >= 2
        assert created.workspace is not None and created.workspace.workspace is not None
        assert created.workspace.workspace.head_commit == head

        tests = bg.exec("sdk", "./test.sh")  # in the workspace directory
        assert (tests.exit_code, tests.stdout) == (0, b"tests-pass\n")
        mixed = bg.exec("sdk", ["sh", "-c", "echo out; echo err >&2; exit 4"])
        assert (mixed.exit_code, mixed.stdout, mixed.stderr) == (4, b"out\n", b"err\n")
        streamed: list[tuple[str, bytes]] = []
        capped = bg.exec("sdk", "head -c 5000 /dev/zero", max_output=1000,
                         output=lambda s, b: streamed.append((s, b)))
        assert len(capped.stdout) == 1000 and capped.stdout_truncated and not capped.stderr_truncated
        assert sum(len(b) for s, b in streamed if s == "stdout") == 5000  # the callback sees everything
        assert bg.exec("sdk", "cat", stdin=b"fed in\n", workdir="/tmp").stdout == b"fed in\n"
        assert bg.exec("sdk", "pwd", workdir="/tmp").stdout == b"/tmp\n"

        bg.exec("sdk", "echo 'changed in the guest' >> hello.txt && printf 'new\\n' > added.txt")
        exported = bg.workspace_export("sdk")
        assert sorted(exported.changed_paths) == ["added.txt", "hello.txt"] and exported.base_commit == head
        patch = exported.patch
        clone = tmp_path / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        git(clone, "apply", input=patch)
        assert (clone / "hello.txt").read_text() == "hello from the host\nchanged in the guest\n"
        assert (clone / "added.txt").read_text() == "new\n"

        assert [v.name for v in bg.list()] == ["sdk"] and bg.show("sdk").workspace is not None
        assert "Linux version" in bg.logs("sdk")
        assert any(li.port == 22 for li in bg.ports("sdk"))
        assert bg.ssh_info("sdk").ip == created.vm.ip
        with pytest.raises(NotFound):
            bg.show("no-such-vm")
        with pytest.raises(InvalidArgument):
            bg.exec("sdk", "   ")

        assert bg.delete("sdk").name == "sdk"
        assert bg.list() == []
        with pytest.raises(NotFound):
            bg.exec("sdk", "true")


def test_sdk_run_deletes_the_vm(vm_home: Home) -> None:
    with sdk(vm_home) as bg:
        done = bg.run("uname -r; exit 3", name="once")
        assert done.exit_code == 3 and done.vm == "once" and not done.kept
        assert done.stdout.decode().strip().endswith("-amd64")
        assert bg.list() == []
