"""banger.sshconfig: the ``Host *.vm`` stanza and the fenced Include in a temp HOME's ``~/.ssh/config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger import sshconfig
from banger.host.run import run_sync

USER_CONFIG = "Host work\n    HostName work.example.com\n    User me\n\nHost *\n    ServerAliveInterval 30\n"


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    state = tmp_path / "state with space" / "ssh"
    return {
        "home": tmp_path / "home",
        "config_path": state / "config",
        "key_path": state / "id_ed25519",
        "known_hosts": state / "known_hosts",
    }


def test_install_into_a_missing_config_and_uninstall(paths: dict[str, Path]) -> None:
    assert sshconfig.install(**paths) is True
    user = paths["home"] / ".ssh" / "config"
    assert user.read_text() == sshconfig.include_block(paths["config_path"])
    assert (user.stat().st_mode & 0o777, user.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert paths["config_path"].stat().st_mode & 0o777 == 0o600
    assert sshconfig.is_installed(paths["home"])
    assert sshconfig.uninstall(paths["home"]) is True
    assert user.read_text() == ""
    assert sshconfig.uninstall(paths["home"]) is False


def test_install_is_idempotent_and_uninstall_restores_bytes(paths: dict[str, Path]) -> None:
    user = paths["home"] / ".ssh" / "config"
    user.parent.mkdir(parents=True)
    user.write_text(USER_CONFIG)
    user.chmod(0o644)
    assert sshconfig.install(**paths) is True
    first = user.read_bytes()
    assert first.decode().startswith(sshconfig.BEGIN + "\nInclude ")
    assert first.decode().endswith("\n\n" + USER_CONFIG)
    assert sshconfig.install(**paths) is False
    assert user.read_bytes() == first
    assert user.stat().st_mode & 0o777 == 0o644  # the user's mode is kept
    assert sshconfig.uninstall(paths["home"]) is True
    assert user.read_text() == USER_CONFIG


def test_reinstall_with_another_path_replaces_the_block(paths: dict[str, Path], tmp_path: Path) -> None:
    text = sshconfig.with_include(USER_CONFIG, Path("/old/ssh/config"))
    moved = sshconfig.with_include(text, Path("/new/ssh/config"))
    assert moved.count(sshconfig.BEGIN) == 1 and '"/new/ssh/config"' in moved and "/old/" not in moved
    assert sshconfig.without_include(moved) == USER_CONFIG


def test_uninstall_leaves_a_block_the_user_moved_down_and_everything_else(paths: dict[str, Path]) -> None:
    block = sshconfig.include_block(Path("/s/config"))
    text = "# mine\n" + block + "Host x\n"
    assert sshconfig.without_include(text) == "# mine\nHost x\n"
    assert sshconfig.without_include("Host y\n") == "Host y\n"
    broken = sshconfig.BEGIN + "\nInclude /s/config\n"  # end marker deleted by hand: leave it alone
    assert sshconfig.without_include(broken) == broken


def test_symlinked_config_is_edited_in_place(paths: dict[str, Path], tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "ssh_config").write_text(USER_CONFIG)
    (paths["home"] / ".ssh").mkdir(parents=True)
    (paths["home"] / ".ssh" / "config").symlink_to(dotfiles / "ssh_config")
    sshconfig.install(**paths)
    assert (paths["home"] / ".ssh" / "config").is_symlink()
    assert (dotfiles / "ssh_config").read_text().endswith(USER_CONFIG)


def test_real_ssh_reads_the_stanza(paths: dict[str, Path]) -> None:
    """``ssh -G`` (the real client's config evaluation) sees banger's settings for *.vm only."""
    user = paths["home"] / ".ssh" / "config"
    user.parent.mkdir(parents=True)
    user.write_text(USER_CONFIG + "Host *\n    User someone\n    StrictHostKeyChecking yes\n")
    sshconfig.install(**paths)
    vm = dict(line.split(" ", 1) for line in run_sync(["ssh", "-F", user, "-G", "dev.vm"]).out.splitlines())
    assert (vm["hostname"], vm["user"], vm["identitiesonly"]) == ("dev.vm", "root", "yes")
    assert vm["identityfile"] == str(paths["key_path"])
    assert vm["userknownhostsfile"] == str(paths["known_hosts"])
    assert vm["stricthostkeychecking"] == "accept-new"
    other = dict(line.split(" ", 1) for line in run_sync(["ssh", "-F", user, "-G", "work"]).out.splitlines())
    assert (other["hostname"], other["user"]) == ("work.example.com", "me")
