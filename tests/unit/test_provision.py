"""banger.guest.provision: planning file_sync entries, and writing files into real ext4 images with debugfs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from banger.config import FileSync
from banger.errors import HostError, InvalidArgument
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


def test_parse_stat_types() -> None:
    out = ("debugfs: stat /.ssh\nInode: 12   Type: directory    Mode:  0700\n"
           "debugfs: stat /.ssh/authorized_keys\ndebugfs: stat /x\nInode: 13   Type: regular    Mode:  0644\n")
    assert provision.parse_stat_types(out) == {"/.ssh": "directory", "/x": "regular"}


async def host_git(home: Path, *args: str) -> None:
    await run(["git", "config", "--global", *args], env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".c")})


async def test_host_git_identity(home: Path) -> None:
    assert await provision.host_git_identity(home) is None
    await host_git(home, "user.name", "Ada Dev")
    assert await provision.host_git_identity(home) == GitIdentity("Ada Dev", "")


# --- real images ----------------------------------------------------------------------------------


@pytest.fixture
async def work_disk(tmp_path: Path) -> Path:
    """A fresh 64 MiB work disk seeded like the golden image's (a root-owned tree with a .bashrc)."""
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / ".bashrc").write_text("# bashrc\n")
    image = tmp_path / "work.ext4"
    await ext4.make_from_tree(seed, image, 64 << 20)
    return image


async def read(image: Path, path: str) -> bytes:
    return (await run(["debugfs", "-R", f"cat {path}", image])).stdout


async def stat(image: Path, path: str) -> tuple[int, int, int]:
    """(mode with type bits, uid, gid) of ``path`` in ``image``."""
    out = await ext4.debugfs(image, f"stat {path}")
    fields = out.split()
    mode = int(fields[fields.index("Mode:") + 1], 8)
    type_bits = {"directory": 0o040000, "regular": 0o100000}[fields[fields.index("Type:") + 1]]
    return type_bits | mode, int(fields[fields.index("User:") + 1]), int(fields[fields.index("Group:") + 1])


async def assert_clean(image: Path) -> None:
    done = await run(["e2fsck", "-fn", image], check=False)
    assert done.returncode == 0, done.out + done.err


async def test_write_files_into_a_real_image(home: Path, work_disk: Path) -> None:
    os.chmod(home / ".config/gh/hosts.yml", 0o644)
    files, _ = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml", mode="0640"),
                    identity=GitIdentity("Ada", "ada@example.com"))
    await provision.write_files(work_disk, files)
    assert await read(work_disk, "/.ssh/authorized_keys") == (KEY + "\n").encode()
    assert await stat(work_disk, "/.ssh") == (0o040700, 0, 0)
    assert await stat(work_disk, "/.ssh/authorized_keys") == (0o100600, 0, 0)
    assert await stat(work_disk, "/.gitconfig") == (0o100644, 0, 0)
    assert await stat(work_disk, "/.config") == (0o040700, 0, 0)
    assert await stat(work_disk, "/.config/gh/hosts.yml") == (0o100640, 0, 0)
    assert await read(work_disk, "/.config/gh/hosts.yml") == b"github.com: {}\n"
    assert await read(work_disk, "/.bashrc") == b"# bashrc\n"
    await assert_clean(work_disk)


async def test_write_files_is_idempotent_and_overwrites(home: Path, work_disk: Path) -> None:
    files, _ = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml"))
    await provision.write_files(work_disk, files)
    # The guest loosened .ssh and left a longer file; the next start puts banger's versions back.
    await run(["debugfs", "-w", "-R", "sif /.ssh mode 040755", work_disk])
    (home / ".config/gh/hosts.yml").write_text("short\n")
    files, _ = plan(home, FileSync(host="~/.config/gh/hosts.yml", guest=".config/gh/hosts.yml"))
    await provision.write_files(work_disk, files)
    await provision.write_files(work_disk, files)
    assert await read(work_disk, "/.config/gh/hosts.yml") == b"short\n"
    assert await stat(work_disk, "/.ssh") == (0o040700, 0, 0)
    listing = await ext4.debugfs(work_disk, "ls /.ssh")
    assert listing.count("authorized_keys") == 1
    await assert_clean(work_disk)


async def test_write_refuses_a_directory_where_a_file_goes(work_disk: Path) -> None:
    await run(["debugfs", "-w", "-R", "mkdir /.gitconfig", work_disk])
    with pytest.raises(HostError, match=r"/root/\.gitconfig .* is a directory"):
        await provision.write_files(work_disk, [FileToWrite(PurePosixPath(".gitconfig"), b"x")])
    await assert_clean(work_disk)


async def test_write_into_a_missing_image_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(HostError):
        await provision.write_files(tmp_path / "nope.ext4", [provision.authorized_keys_file(KEY)])
