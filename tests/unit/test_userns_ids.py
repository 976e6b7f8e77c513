"""The subordinate-id block an owner's image work is mapped onto (banger.host.userns), and the jailer's pid
file as the helper reads it (banger.host.jail): real files, hostile contents."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from banger.errors import HostError
from banger.host import jail, userns


def _subuid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subuid"
    path.write_text(text)
    return path


def test_the_first_whole_block_of_the_user_is_taken(tmp_path: Path) -> None:
    path = _subuid(tmp_path, "other:100000:65536\nme:300000:1000\nme:400000:65536\nme:500000:65536\n")
    assert userns._first_block(path, "me", 4242) == 400000
    assert userns._first_block(_subuid(tmp_path, "4242:600000:70000\n"), "me", 4242) == 600000  # by uid


@pytest.mark.parametrize("text", ["", "other:100000:65536\n", "me:100000:100\n", "me:x:65536\n"])
def test_no_whole_block_says_how_to_add_one(tmp_path: Path, text: str) -> None:
    with pytest.raises(HostError, match="no block of 65536 subordinate ids") as err:
        userns._first_block(_subuid(tmp_path, text), "me", 4242)
    assert "usermod --add-subuids" in (err.value.hint or "")


def test_a_block_holding_root_an_account_or_the_owner_itself_is_refused(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    for start, uid in ((0, 4242), (nobody - 10, 4242), (4000, 4242)):
        with pytest.raises(HostError, match="include"):
            userns._first_block(_subuid(tmp_path, f"me:{start}:65536\n"), "me", uid)


def test_the_maps_put_the_block_at_zero_and_the_owner_at_65536() -> None:
    ids = userns.IdMap(owner_uid=1001, owner_gid=1002, subuid=100000, subgid=200000)
    assert ids.uid_map() == "0 100000 65536\n65536 1001 1\n"
    assert ids.gid_map() == "0 200000 65536\n65536 1002 1\n"


@pytest.mark.parametrize("kind", ["fifo", "symlink", "not root's", "too big", "missing"])
def test_the_jailer_pid_file_is_believed_only_as_a_small_regular_file_of_root_s(tmp_path: Path, kind: str) -> None:
    where = jail.JailPaths(tmp_path / "state-jail", "0123456789ab")
    where.root.mkdir(parents=True)
    pid_file = where.root / jail.PID_FILE
    if kind == "fifo":
        os.mkfifo(pid_file)  # would block a plain open() forever
    elif kind == "symlink":
        pid_file.symlink_to("/etc/hostname")
    elif kind == "not root's":
        pid_file.write_text("1234")
        os.chown(pid_file, 65534, 65534)
    elif kind == "too big":
        pid_file.write_text("1" * 64)
    with pytest.raises((OSError, ValueError)):
        jail._read_pid_file(where)


def test_a_good_pid_file_is_read(tmp_path: Path) -> None:
    where = jail.JailPaths(tmp_path / "state-jail", "0123456789ab")
    where.root.mkdir(parents=True)
    (where.root / jail.PID_FILE).write_text("4321")
    assert jail._read_pid_file(where) == 4321
