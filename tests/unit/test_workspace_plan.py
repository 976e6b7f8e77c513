"""The pure parts of workspaces: guest paths, the shallow .git skeleton, guest scripts, name parsing."""

from __future__ import annotations

import pytest

from banger.errors import InvalidArgument
from banger.workspace import patch, plan


@pytest.mark.parametrize(("given", "expected"), [
    (None, "/root/repo"), ("/root/work/app", "/root/work/app"), ("proj", "/root/proj"),
    ("/root/a/../b", "/root/b"), ("/root/x/", "/root/x"),
])
def test_guest_path_normalises_under_root(given: str | None, expected: str) -> None:
    assert plan.guest_path(given) == expected


@pytest.mark.parametrize("bad", ["/root", "/etc/passwd", "/root/../etc", "/rootx/y", "../x", "/root/a\nb"])
def test_guest_path_refuses_escapes(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="under /root"):
        plan.guest_path(bad)


@pytest.mark.parametrize("bad", ["/root/a\0b", "/root/a\rb", "/root/\x1b[31mred", "/root/a\x85b", "a\nb", "\n"])
def test_guest_path_refuses_control_characters(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="control characters"):
        plan.guest_path(bad)


def test_scripts_quote_the_guest_path_in_messages_too() -> None:
    script = plan.empty_check_script("/root/it's")
    assert "'banger: /root/it'\"'\"'s is not empty'" in script and "echo" not in script


def test_shallow_git_files_branch_and_detached() -> None:
    head = "a" * 40
    on_branch = plan.shallow_git_files(head, "main")
    assert on_branch["HEAD"] == "ref: refs/heads/main\n" and on_branch["refs/heads/main"] == head + "\n"
    assert on_branch["shallow"] == head + "\n"
    detached = plan.shallow_git_files(head, None)
    assert detached["HEAD"] == head + "\n" and not any(k.startswith("refs/") for k in detached)


def test_host_tar_argv_adds_git_dir_only_when_given() -> None:
    assert plan.host_tar_argv("/r", None)[-1] == "--files-from=-"
    assert plan.host_tar_argv("/r", "/tmp/x")[-4:] == ["-C", "/tmp/x", "--recursion", ".git"]


def test_setup_script_quotes_and_orders_steps() -> None:
    s = plan.GuestSetup(guest_path="/root/my repo", head="b" * 40, branch="agent/try", detach=False,
                        checkout=True, identity=(("user.name", "O'Brien"),))
    script = plan.setup_script(s)
    assert "cd '/root/my repo'" in script
    assert script.index("update-ref refs/heads/agent/try") < script.index("git read-tree") < \
        script.index("checkout-index -a -u")
    assert "git config user.name 'O'\"'\"'Brien'" in script
    assert script.rstrip().endswith("git rev-parse HEAD")


def test_wants_bootstrap() -> None:
    assert plan.wants_bootstrap({".tool-versions", "src"})
    assert plan.wants_bootstrap({".mise.toml"})
    assert not plan.wants_bootstrap({"README.md"})


def test_parse_names() -> None:
    out = b"c" * 40 + b"\0a b.txt\0na\xc3\xafve.txt\0"
    assert patch.parse_names(out) == ("c" * 40, ["a b.txt", "naïve.txt"])
    assert patch.parse_names(b"d" * 40 + b"\0") == ("d" * 40, [])


@pytest.mark.parametrize("name", plan.MISE_FILES)
def test_a_mise_config_needs_nat_or_no_bootstrap(name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        plan.check_bootstrap_network("/src/app", {name, "README.md"}, nat=False, no_bootstrap=False)
    assert name in refused.value.message and "/src/app" in refused.value.message
    assert "--nat" in (refused.value.hint or "") and "--no-bootstrap" in (refused.value.hint or "")
    plan.check_bootstrap_network("/src/app", {name}, nat=True, no_bootstrap=False)
    plan.check_bootstrap_network("/src/app", {name}, nat=False, no_bootstrap=True)
    plan.check_bootstrap_network("/src/app", {"README.md", "docs"}, nat=False, no_bootstrap=False)


@pytest.mark.parametrize(("given", "expected"), [
    ("/tmp", "/tmp"), ("sub/dir", "/root/sub/dir"), ("/root/repo/../x/", "/root/x"), ("..", "/"),
])
def test_exec_dir_is_absolute(given: str, expected: str) -> None:
    assert plan.exec_dir(given) == expected


def test_exec_dir_refuses_control_characters() -> None:
    with pytest.raises(InvalidArgument, match="control characters"):
        plan.exec_dir("/root/a\nb")
