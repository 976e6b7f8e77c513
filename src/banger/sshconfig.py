"""``banger ssh-config``: a ``Host *.vm`` stanza in banger's own file, Included from ``~/.ssh/config``.

``ssh dev.vm`` then works with any tool that speaks ssh (scp, rsync, git, editors): the name resolves
through banger's DNS server, and the stanza supplies root, banger's key and banger's known_hosts.
``StrictHostKeyChecking accept-new``: banger pins each VM's key under its address and ``<name>.vm`` when
it first connects, so ssh normally finds the key already there; a VM ssh reaches first is pinned on that
first use (the same trust banger gives it), and a changed key is still refused.

The Include goes at the very top of ``~/.ssh/config`` (ssh takes the first value it finds for each
option), fenced by marker lines so that installing twice changes nothing and uninstalling removes exactly
those lines, leaving the rest of the file byte-identical.
"""

from __future__ import annotations

from pathlib import Path

from banger.files import write_atomic

BEGIN = "# >>> banger >>> managed by `banger ssh-config`; remove with `banger ssh-config --uninstall`"
END = "# <<< banger <<<"


def _q(path: Path) -> str:
    return '"' + str(path).replace('"', '\\"') + '"'


def render_config(key_path: Path, known_hosts: Path, *, domain: str = "vm") -> str:
    """The contents of banger's own ssh config file (``<state>/ssh/config``)."""
    return (
        "# Written by `banger ssh-config --install`; rewritten on every install.\n"
        f"Host *.{domain}\n"
        "    HostName %h\n"
        "    User root\n"
        f"    IdentityFile {_q(key_path)}\n"
        "    IdentitiesOnly yes\n"
        "    IdentityAgent none\n"
        f"    UserKnownHostsFile {_q(known_hosts)}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    StrictHostKeyChecking accept-new\n"
        "    CheckHostIP no\n"
        "    HashKnownHosts no\n"
        "    ForwardAgent no\n"
        "    LogLevel ERROR\n"
    )


def include_block(config_path: Path) -> str:
    """The fenced lines that ``~/.ssh/config`` gets."""
    return f"{BEGIN}\nInclude {_q(config_path)}\n{END}\n"


def _find_block(text: str) -> tuple[int, int] | None:
    """(start, end) offsets of the fenced block, including one blank line after it; None if absent."""
    start = text.find(BEGIN + "\n")
    if start < 0 or (start > 0 and text[start - 1] != "\n"):
        return None
    end = text.find("\n" + END + "\n", start)
    if end < 0:
        return None
    end += len(END) + 2
    if text.startswith("\n", end):
        end += 1
    return start, end


def with_include(text: str, config_path: Path) -> str:
    """``text`` with the Include block at its top (replacing an old block); unchanged if already there."""
    block = include_block(config_path)
    found = _find_block(text)
    if found and text[found[0] : found[1]].startswith(block) and found[0] == 0:
        return text
    rest = without_include(text)
    return block + ("\n" + rest if rest else "")


def without_include(text: str) -> str:
    """``text`` without the fenced block (and the blank line install put after it); else unchanged."""
    found = _find_block(text)
    return text if found is None else text[: found[0]] + text[found[1] :]


def _user_config(home: Path) -> Path:
    path = home / ".ssh" / "config"
    # Dotfile managers symlink ~/.ssh/config: edit the file it points at, keep the link.
    return path.resolve() if path.is_symlink() else path


def _write(path: Path, text: str, default_mode: int) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else default_mode
    write_atomic(path, text.encode(), mode)
def install(home: Path, config_path: Path, key_path: Path, known_hosts: Path) -> bool:
    """Write banger's ssh config and Include it from ``home/.ssh/config``; True if that file changed."""
    config_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(config_path, render_config(key_path, known_hosts), 0o600)
    user = _user_config(home)
    user.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    before = user.read_text() if user.exists() else ""
    after = with_include(before, config_path)
    if after == before and user.exists():
        return False
    _write(user, after, 0o600)
    return True


def uninstall(home: Path) -> bool:
    """Remove banger's Include block from ``home/.ssh/config``; True if it was there."""
    user = _user_config(home)
    if not user.exists():
        return False
    before = user.read_text()
    after = without_include(before)
    if after == before:
        return False
    _write(user, after, 0o600)
    return True


def is_installed(home: Path) -> bool:
    """Whether ``home/.ssh/config`` has banger's Include block."""
    user = _user_config(home)
    return user.exists() and _find_block(user.read_text()) is not None
