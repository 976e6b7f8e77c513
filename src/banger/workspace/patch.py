"""Guest scripts for ``workspace export``: one binary patch of everything since a base, via a throwaway index."""

from __future__ import annotations

import shlex

INLINE_LIMIT = 8 << 20  # patches up to this size travel inline: base64 grows them 4/3 and frames max 16 MiB
BAD_BASE_STATUS = 18  # the export script's exit status when the base does not name a commit


def _prologue(guest: str, base: str) -> list[str]:
    # The real index is copied (not just read-tree'd) so `git add -A` reuses its stat cache instead of
    # hashing every file again; the guest's own .git/index and work tree are never written.
    q = shlex.quote(guest)
    return [
        "set -eu",
        f"cd {q}",
        f"base=$(git rev-parse --verify -q {shlex.quote(base + '^{commit}')}) || "
        f"{{ echo 'banger: {base} is not a commit in the guest repository' >&2; exit {BAD_BASE_STATUS}; }}",
        'GIT_INDEX_FILE=$(mktemp "${TMPDIR:-/tmp}/banger-export.XXXXXX")',
        "export GIT_INDEX_FILE",
        "trap 'rm -f \"$GIT_INDEX_FILE\"' EXIT",
        'if [ -f .git/index ]; then cat .git/index >"$GIT_INDEX_FILE"; else rm -f "$GIT_INDEX_FILE"; '
        "git read-tree HEAD; fi",
        "git add -A",
    ]


DIFF = "git -c core.quotepath=off diff --cached --no-renames --no-ext-diff --no-textconv --no-color"


def names_script(guest: str, base: str) -> str:
    """Guest shell printing the resolved base, a NUL, then the changed paths NUL-separated."""
    return "\n".join([*_prologue(guest, base), 'printf "%s\\0" "$base"', f'{DIFF} --name-only -z "$base"']) + "\n"


def patch_script(guest: str, base: str) -> str:
    """Guest shell printing the binary-safe patch of work tree + commits against ``base``."""
    return "\n".join([*_prologue(guest, base), f'{DIFF} --binary --full-index "$base"']) + "\n"


def parse_names(out: bytes) -> tuple[str, list[str]]:
    """(base commit, changed paths) from :func:`names_script` output."""
    fields = out.decode(errors="surrogateescape").split("\0")
    return fields[0].strip(), [f for f in fields[1:] if f]
