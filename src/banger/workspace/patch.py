"""Guest scripts for ``workspace export``: one binary patch of everything since a base, via a throwaway index."""

from __future__ import annotations

from banger.errors import InvalidArgument
from banger.script import Script

MAX_PATCH = 256 << 20  # an export bigger than this is refused: commit and push from the guest instead
CHUNK = 4 << 20  # bytes per vm.workspace.export.read (base64 keeps a reply well under the 16 MiB frame)
INLINE_LIMIT = 8 << 20  # patches up to this size travel inline: base64 grows them 4/3 and frames max 16 MiB
BAD_BASE_STATUS = 18  # the export script's exit status when the base does not name a commit


def check_base(guest: str, base: str) -> Script:
    """A script that enters ``guest`` and sets ``$base`` to the commit ``base`` names (or exits 18)."""
    if not guest.startswith("/"):
        raise InvalidArgument(f"guest directory {guest!r} must be an absolute path")
    if base.startswith("-"):  # git rev-parse would read it as an option
        raise InvalidArgument(f"--base-commit {base!r} must name a commit, not start with '-'")
    s = Script().cmd("cd", guest)
    s.line("if ! base=$(git rev-parse --verify -q {}); then", base + "^{commit}")
    s.say(f"banger: {base} is not a commit in the guest repository")
    return s.line("exit {}", BAD_BASE_STATUS).raw("fi")


def _prologue(guest: str, base: str) -> Script:
    # The real index is copied (not just read-tree'd) so `git add -A` reuses its stat cache instead of
    # hashing every file again; the guest's own .git/index and work tree are never written.
    s = check_base(guest, base)
    s.raw('GIT_INDEX_FILE=$(mktemp "${TMPDIR:-/tmp}/banger-export.XXXXXX")')
    s.raw("export GIT_INDEX_FILE")
    s.raw("trap 'rm -f \"$GIT_INDEX_FILE\"' EXIT")
    s.raw('if [ -f .git/index ]; then cat .git/index >"$GIT_INDEX_FILE"; else rm -f "$GIT_INDEX_FILE"; '
          "git read-tree HEAD; fi")
    return s.raw("git add -A")


DIFF = "git -c core.quotepath=off diff --cached --no-renames --no-ext-diff --no-textconv --no-color"


def names_script(guest: str, base: str) -> str:
    """Guest shell printing the resolved base, a NUL, then the changed paths NUL-separated."""
    return _prologue(guest, base).raw('printf "%s\\0" "$base"').raw(DIFF + ' --name-only -z "$base"').render()


def patch_script(guest: str, base: str) -> str:
    """Guest shell printing the binary-safe patch of work tree + commits against ``base``."""
    return _prologue(guest, base).raw(DIFF + ' --binary --full-index "$base"').render()


def export_script(guest: str, base: str) -> str:
    """Both in one pass (one `git add -A`): the base, NUL, the changed paths each NUL-terminated, one more
    NUL, then the patch (see :func:`split_export`)."""
    s = _prologue(guest, base).raw('printf "%s\\0" "$base"').raw(DIFF + ' --name-only -z "$base"')
    return s.raw("printf '\\0'").raw(DIFF + ' --binary --full-index "$base"').render()


def split_export(head: bytes, start: int = 0) -> tuple[str, list[str], int] | None:
    """(base commit, changed paths, offset where the patch starts) from the start of
    :func:`export_script` output; None when ``head`` does not reach the end of the list yet (``start``:
    where to begin looking, when the bytes before it were looked at already)."""
    cut = head.find(b"\0\0", start)
    if cut < 0:
        return None
    base, names = parse_names(head[:cut + 1])
    return base, names, cut + 2


def parse_names(out: bytes) -> tuple[str, list[str]]:
    """(base commit, changed paths) from :func:`names_script` output."""
    fields = out.decode(errors="surrogateescape").split("\0")
    return fields[0].strip(), [f for f in fields[1:] if f]
