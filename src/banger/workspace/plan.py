"""What a workspace prepare ships and the guest scripts that unpack it (pure: no I/O)."""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from banger.errors import InvalidArgument

DEFAULT_GUEST_PATH = "/root/repo"
GUEST_ROOT = "/root"
BOOTSTRAP_LOG = "/root/.cache/banger/mise-bootstrap.log"
MISE_FILES = (".mise.toml", "mise.toml", ".tool-versions")
NOT_EMPTY_STATUS = 17  # the prepare script's exit status when the target directory holds files already


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
    if not norm.startswith(GUEST_ROOT + "/") or "\0" in norm or "\n" in norm:
        raise InvalidArgument(f"--guest-path {text!r} must be a directory under {GUEST_ROOT}, e.g. /root/repo")
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


def empty_check_script(guest: str) -> str:
    """Guest shell: exit NOT_EMPTY_STATUS when ``guest`` is a non-empty directory."""
    q = shlex.quote(guest)
    return (f"set -eu\nif [ -d {q} ] && [ -n \"$(ls -A {q})\" ]; then "
            f"echo 'banger: {guest} is not empty' >&2; exit {NOT_EMPTY_STATUS}; fi\n")


def unpack_script(guest: str) -> str:
    """Guest shell: refuse a non-empty target, then extract the tar on stdin into it."""
    q = shlex.quote(guest)
    return empty_check_script(guest) + f"mkdir -p {q}\ntar -x --no-same-owner -f - -C {q}\n"


def setup_script(s: GuestSetup) -> str:
    """Guest shell run after unpacking: branch, index, identity; prints the resulting HEAD."""
    lines = ["set -eu", f"cd {shlex.quote(s.guest_path)}", "export GIT_TERMINAL_PROMPT=0"]
    if s.branch:
        lines.append(f"git update-ref refs/heads/{shlex.quote(s.branch)} {s.head}")
        lines.append(f"git symbolic-ref HEAD refs/heads/{shlex.quote(s.branch)}")
    elif s.detach:
        lines.append(f"git update-ref --no-deref HEAD {s.head}")
    if s.checkout:
        lines.append(f"git read-tree {s.head}")
        lines.append("git checkout-index -a -u")
    else:
        lines.append("[ -f .git/index ] || git read-tree HEAD")
    lines.append("git update-index -q --refresh >/dev/null || true")
    lines += [f"git config {shlex.quote(k)} {shlex.quote(v)}" for k, v in s.identity]
    lines.append("git rev-parse HEAD")
    return "\n".join(lines) + "\n"


def wants_bootstrap(shipped_names: set[str]) -> bool:
    """Whether the shipped top level has a mise configuration."""
    return any(name in shipped_names for name in MISE_FILES)


def bootstrap_script(guest: str) -> str:
    """Guest shell: start ``mise trust && mise install`` in the background, logging under /root/.cache/banger."""
    q = shlex.quote(guest)
    log = shlex.quote(BOOTSTRAP_LOG)
    return (f"mkdir -p {shlex.quote(posixpath.dirname(BOOTSTRAP_LOG))} && cd {q} && "
            f"nohup sh -c 'mise trust && mise install' >{log} 2>&1 </dev/null &")


MISE_PROBE = "command -v mise >/dev/null 2>&1"
