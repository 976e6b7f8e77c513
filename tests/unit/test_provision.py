"""banger.guest.provision: planning file_sync entries, and the per-start config disk as a real ext4 image."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from banger.config import FileSync
from banger.errors import InvalidArgument
from banger.guest import provision
from banger.guest.provision import FileToWrite, GitIdentity
from banger.host import ext4
from banger.host.run import run

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBanger banger"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home" / "dev"
    (h / ".config/gh").mkdir(parents=True)
    (h / ".config/gh/hosts.yml").write_text("github.com: {}\n")
    return h


def plan(home: Path, *entries: FileSync, identity: GitIdentity | None = None):
    return provision.plan_files(list(entries), home, public_key_line=KEY, git_identity=identity)


def test_plan_has_key_gitconfig_and_synced_files(home: Path) -> None:
    files, warnings = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml"),
                           FileSync(host="~/.netrc", guest="/root/.netrc", mode="0400"),
                           identity=GitIdentity('Ada "the" Dev', "ada@example.com"))
    by_path = {str(f.path): f for f in files}
    assert list(by_path) == [".ssh/authorized_keys", ".gitconfig", ".config/gh/hosts.yml"]
    assert by_path[".ssh/authorized_keys"].content == (KEY + "\n").encode()
    assert (by_path[".ssh/authorized_keys"].mode, by_path[".ssh/authorized_keys"].parent_mode) == (0o600, 0o700)
    assert by_path[".gitconfig"].content == b'[user]\n\tname = "Ada \\"the\\" Dev"\n\temail = "ada@example.com"\n'
    assert by_path[".config/gh/hosts.yml"].content == b"github.com: {}\n"
    assert warnings == ["file_sync[1]: ~/.netrc does not exist on this host; skipped"]


def test_plan_skips_gitconfig_when_unset_and_user_entry_wins(home: Path) -> None:
    (home / "mygit").write_text("[core]\n")
    assert [str(f.path) for f in plan(home, identity=GitIdentity("", ""))[0]] == [".ssh/authorized_keys"]
    files, _ = plan(home, FileSync(host="mygit", guest=".gitconfig", mode="0644"),
                    identity=GitIdentity("Ada", ""))
    assert files[-1] == FileToWrite(PurePosixPath(".gitconfig"), b"[core]\n", 0o644)
    assert len(files) == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (FileSync(host="/etc/passwd", guest="x"), "not inside your home"),
        (FileSync(host="~/../other/secret", guest="x"), "not inside your home"),
        (FileSync(host="~root/.bashrc", guest="x"), "only ~/"),
        (FileSync(host="~", guest="x"), "not inside your home"),
        (FileSync(host="~/a", guest="../etc/passwd"), "without '..'"),
        (FileSync(host="~/a", guest="/etc/shadow"), "not under /root"),
        (FileSync(host="~/a", guest="/root"), "must name a file"),
        (FileSync(host="~/a", guest="a b"), "characters banger cannot write"),
        (FileSync(host="~/a", guest=".ssh/authorized_keys"), "managed by banger"),
        (FileSync(host="~/.config", guest="cfg"), "not a regular file"),
    ],
)
def test_invalid_entries_name_their_index(home: Path, entry: FileSync, message: str) -> None:
    (home / "a").write_text("a")
    ok = FileSync(host="~/a", guest="a")
    with pytest.raises(InvalidArgument, match=rf"^file_sync\[2\]: .*{message}"):
        plan(home, ok, ok, entry)


def test_symlink_escaping_home_is_refused(home: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    (home / "link").symlink_to(tmp_path / "outside")
    (home / "inside").symlink_to(home / ".config/gh/hosts.yml")
    with pytest.raises(InvalidArgument, match=r"file_sync\[0\]: .*not inside your home"):
        plan(home, FileSync(host="~/link", guest="x"))
    files, _ = plan(home, FileSync(host="~/inside", guest="hosts.yml"))
    assert files[-1].content == b"github.com: {}\n"


async def host_git(home: Path, *args: str) -> None:
    await run(["git", "config", "--global", *args], env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".c")})


async def test_host_git_identity(home: Path) -> None:
    assert await provision.host_git_identity(home) is None
    await host_git(home, "user.name", "Ada Dev")
    assert await provision.host_git_identity(home) == GitIdentity("Ada Dev", "")


# --- the config disk, a real ext4 image ------------------------------------------------------------


async def read(image: Path, path: str) -> bytes:
    return (await run(["debugfs", "-R", f"cat {path}", image])).stdout


async def stat(image: Path, path: str) -> int:
    """The mode (with type bits) of ``path`` in ``image``."""
    fields = (await ext4.debugfs(image, f"stat {path}")).split()
    type_bits = {"directory": 0o040000, "regular": 0o100000}[fields[fields.index("Type:") + 1]]
    return type_bits | int(fields[fields.index("Mode:") + 1], 8)


async def test_config_disk_holds_the_files_and_the_host_key(home: Path, tmp_path: Path) -> None:
    os.chmod(home / ".config/gh/hosts.yml", 0o644)
    files, _ = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml", mode="0640"),
                    identity=GitIdentity("Ada", "ada@example.com"))
    disk = tmp_path / provision.CONFIG_DISK
    await provision.build_config_disk(disk, files, (b"PRIVATE\n", b"ssh-ed25519 AAAA host\n"))
    assert await read(disk, "/root/.ssh/authorized_keys") == (KEY + "\n").encode()
    assert await stat(disk, "/root/.ssh") == 0o040700
    assert await stat(disk, "/root/.ssh/authorized_keys") == 0o100600
    assert await stat(disk, "/root/.gitconfig") == 0o100644
    assert await stat(disk, "/root/.config/gh/hosts.yml") == 0o100640
    assert await read(disk, "/root/.config/gh/hosts.yml") == b"github.com: {}\n"
    assert await read(disk, "/ssh/ssh_host_ed25519_key") == b"PRIVATE\n"
    assert await stat(disk, "/ssh/ssh_host_ed25519_key") == 0o100600
    label = (await run(["e2label", disk])).out.strip()
    assert label == provision.CONFIG_LABEL
    assert (await run(["e2fsck", "-fn", disk], check=False)).returncode == 0
    assert os.stat(disk).st_mode & 0o777 == 0o600 and not list(tmp_path.glob(".config-*"))


async def test_config_disk_is_rebuilt_from_scratch_each_time(home: Path, tmp_path: Path) -> None:
    disk = tmp_path / provision.CONFIG_DISK
    files, _ = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml"))
    await provision.build_config_disk(disk, files, None)
    (home / ".config/gh/hosts.yml").write_text("short\n")
    files, _ = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml"))
    await provision.build_config_disk(disk, files, None)
    assert await read(disk, "/root/.config/gh/hosts.yml") == b"short\n"
    assert b"ssh_host" not in (await run(["debugfs", "-R", "ls /", disk])).stdout
