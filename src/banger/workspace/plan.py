"""What a workspace prepare ships and the guest scripts around it: unpack, resync, mise (pure: no I/O)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from banger.errors import InvalidArgument
from banger.script import Script, fill

DEFAULT_GUEST_PATH = "/root/repo"
GUEST_ROOT = "/root"
BOOTSTRAP_LOG = "/root/.cache/banger/mise-bootstrap.log"
MISE_FILES = (".mise.toml", "mise.toml", ".tool-versions")
NOT_EMPTY_STATUS = 17  # the prepare script's exit status when the target directory holds files already
MOVED_STATUS = 18  # the resync script's exit status when the guest HEAD is no longer the prepared commit
COMMIT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a full SHA-1 or SHA-256 object id
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class GuestSetup:
    """What the guest does with the unpacked tar to end with HEAD == ``head``."""

    guest_path: str
    head: str  # commit the guest HEAD must equal
    branch: str | None  # guest-only branch to point at ``head`` and check out (full_copy)
    detach: bool  # point a detached HEAD at ``head`` (full_copy with --from and no --branch)
    checkout: bool  # True: the tar carried no work tree; check ``head``'s tree out from the objects
    identity: tuple[tuple[str, str], ...] = ()  # (git config key, value)


def guest_path(text: str | None) -> str:
    """The normalised guest directory for a workspace; it must lie strictly under /root."""
    raw = text or DEFAULT_GUEST_PATH
    if not raw.startswith("/"):
        raw = posixpath.join(GUEST_ROOT, raw)
    norm = posixpath.normpath(raw)
    if not norm.startswith(GUEST_ROOT + "/") or CONTROL_RE.search(norm):
        raise InvalidArgument(f"--guest-path {text!r} must be a directory under {GUEST_ROOT} with no control "
                              "characters (newline, NUL, ...), e.g. /root/repo")
    return norm


def shallow_git_files(head: str, branch: str | None) -> dict[str, str]:
    """Text files of a fresh .git whose HEAD is ``head`` (marked shallow), relative to the .git dir."""
    files = {
        "config": "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n",
        "shallow": f"{head}\n",
        "description": "prepared by banger\n",
    }
    if branch:
        files["HEAD"] = f"ref: refs/heads/{branch}\n"
        files[f"refs/heads/{branch}"] = f"{head}\n"
    else:
        files["HEAD"] = f"{head}\n"
    return files


def host_tar_argv(root: str, extra_dir: str | None) -> list[str]:
    """``tar`` writing one archive to stdout: NUL-separated names from stdin relative to ``root``,
    then (recursively) ``.git`` from ``extra_dir`` when given."""
    argv = ["tar", "--create", "--file=-", "--numeric-owner", "--owner=0", "--group=0", "--format=gnu",
            "-C", root, "--null", "--no-recursion", "--files-from=-"]
    if extra_dir:
        argv += ["-C", extra_dir, "--recursion", ".git"]
    return argv


def _checked_dir(guest: str) -> str:
    """``guest`` if it is an absolute path: a relative one could start with ``-`` and read as an option."""
    if not guest.startswith("/"):
        raise InvalidArgument(f"guest directory {guest!r} must be an absolute path")
    return guest


def _checked_commit(head: str) -> str:
    """``head`` if it is a full commit id (the scripts pass it as an argument, so never an option)."""
    if not COMMIT_RE.fullmatch(head):
        raise InvalidArgument(f"{head!r} is not a full commit id")
    return head


def _empty_check(s: Script, guest: str) -> Script:
    s.line('if [ -d {guest} ] && [ -n "$(ls -A {guest})" ]; then', guest=_checked_dir(guest))
    s.say(f"banger: {guest} is not empty")
    return s.line("exit {}", NOT_EMPTY_STATUS).raw("fi")


def empty_check_script(guest: str) -> str:
    """Guest shell: exit NOT_EMPTY_STATUS when ``guest`` is a non-empty directory."""
    return _empty_check(Script(), guest).render()


def unpack_script(guest: str) -> str:
    """Guest shell: refuse a non-empty target, then extract the tar on stdin into it."""
    s = _empty_check(Script(), guest)
    return s.cmd("mkdir", "-p", guest).cmd("tar", "-x", "--no-same-owner", "-f", "-", "-C", guest).render()


def setup_script(st: GuestSetup) -> str:
    """Guest shell run after unpacking: branch, index, identity; prints the resulting HEAD."""
    head = _checked_commit(st.head)
    s = Script().cmd("cd", _checked_dir(st.guest_path)).raw("export GIT_TERMINAL_PROMPT=0")
    if st.branch:
        s.cmd("git", "update-ref", f"refs/heads/{st.branch}", head)
        s.cmd("git", "symbolic-ref", "HEAD", f"refs/heads/{st.branch}")
    elif st.detach:
        s.cmd("git", "update-ref", "--no-deref", "HEAD", head)
    if st.checkout:
        s.cmd("git", "read-tree", head).raw("git checkout-index -a -u")
    else:
        s.raw("[ -f .git/index ] || git read-tree HEAD")
    s.raw("git update-index -q --refresh >/dev/null || true")
    for key, value in st.identity:
        s.cmd("git", "config", key, value)  # git config stops parsing options at the key: a value may start with -
    return s.raw("git rev-parse HEAD").render()


def wants_bootstrap(shipped_names: set[str]) -> bool:
    """Whether the shipped top level has a mise configuration."""
    return any(name in shipped_names for name in MISE_FILES)


def bootstrap_script(guest: str) -> str:
    """Guest shell: start ``mise trust && mise install`` in the background, logging under /root/.cache/banger."""
    return Script(strict=False).line(
        "mkdir -p {} && cd {} && nohup sh -c {} >{} 2>&1 </dev/null &",
        posixpath.dirname(BOOTSTRAP_LOG), _checked_dir(guest), "mise trust && mise install", BOOTSTRAP_LOG,
    ).render()


MISE_PROBE = "command -v mise >/dev/null 2>&1"
_SHELL = '"${{BASH:-sh}}" -c "$banger_cmd"'  # the shell running this (bash, else sh) on the user's command


def check_bootstrap_network(root: str, top_level: set[str], *, nat: bool, no_bootstrap: bool) -> None:
    """InvalidArgument when the repository's mise config would start ``mise install`` in a VM without the
    network (no NAT: the guest cannot download a tool), before any VM is made."""
    found = [name for name in MISE_FILES if name in top_level]
    if found and not nat and not no_bootstrap:
        raise InvalidArgument(f"{root} has {' and '.join(found)}, but `mise install` in the guest needs the "
                              "network and the VM would have none",
                              hint="pass --nat so the guest can download the tools, or --no-bootstrap to skip them")


def tools_command(command: str, *, install: bool) -> str:
    """Guest shell: ``command`` (a shell string) run through ``mise exec`` when the guest has mise, so the
    tools and env of the directory's mise config apply, else as it is. Missing tools are installed only when
    ``install`` (the VM has the network: without it mise would fail before running anything)."""
    mise = "mise exec -- " if install else "env MISE_EXEC_AUTO_INSTALL=false mise exec -- "
    return fill("{{ banger_cmd={}; if " + MISE_PROBE + "; then exec " + mise + _SHELL + "; fi; exec " + _SHELL
                + "; }}", command)


def resync_script(guest: str, head: str, *, unmount: bool) -> str:
    """Guest shell: make ``guest`` an empty directory for a fresh prepare, unless its HEAD moved off ``head``
    (exit MOVED_STATUS: commits made in the guest would be lost). ``unmount``: the workspace is a disk built
    on the host; it is unmounted (and kept as it is) rather than emptied."""
    s = Script().line("[ -d {} ] || exit 0", _checked_dir(guest)).cmd("cd", guest)
    s.line('[ "$(git rev-parse -q --verify HEAD || true)" = {} ] || exit {}', _checked_commit(head), MOVED_STATUS)
    if unmount:
        s.cmd("cd", "/").line("! mountpoint -q {0} || umount -l {0}", guest).cmd("cd", guest)
    return s.raw("find . -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +").render()


def exec_dir(text: str) -> str:
    """The guest directory of `vm exec --guest-path`: absolute, or relative to /root."""
    if CONTROL_RE.search(text):
        raise InvalidArgument(f"--guest-path {text!r} must not hold control characters (newline, NUL, ...)")
    return posixpath.normpath(posixpath.join(GUEST_ROOT, text))
