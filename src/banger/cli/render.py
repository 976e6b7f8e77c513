"""Output for people (rich tables) and for scripts (``--json``), in one place.

Terminal safety: text that came from outside (names, distro strings, guest process names, error
messages, console output, arguments) is printed through :func:`clean` / :func:`literal` / :func:`echo`:
terminal escape sequences and control characters are removed (newline and tab only where the caller
allows them), and rich never reads the text as markup or emoji codes.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# Whole escape sequences go first, so no "[31m" residue is left once ESC itself is gone: CSI (ESC [ or
# U+009B, parameters, final byte), string sequences (OSC ESC ], DCS ESC P, SOS ESC X, PM ESC ^, APC ESC _,
# or their C1 forms) up to BEL or ST, and the other two- or three-byte ESC sequences. String bodies stop
# at any ESC or C1 character, which keeps the scan linear on hostile input (no backtracking to the end).
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x80-\x9f]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]"
)
_UNFINISHED = re.compile(r"(?:\x1b(?:\[[0-?]*[ -/]*|[\]PX^_][^\x07\x1b\x80-\x9f]*|[ -/]*)"
                         r"|[\x9b][0-?]*[ -/]*|[\x90\x98\x9d\x9e\x9f][^\x07\x1b\x80-\x9f]*)\Z")
# C0, DEL, C1, and the bidirectional overrides that make a terminal show text in another order than it is.
_CONTROL_CHARS = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F),
                  *range(0x2066, 0x206A)]


@cache
def _strip_table(keep: str) -> dict[int, None]:
    return {c: None for c in _CONTROL_CHARS if chr(c) not in keep}


def clean(value: object, *, keep: str = "") -> str:
    """``value`` as text a terminal shows literally: escape sequences and control characters removed,
    except the characters in ``keep`` (e.g. ``"\\n\\t"``)."""
    text = "" if value is None else str(value)
    return _ESCAPES.sub("", text).translate(_strip_table(keep))


def split_unfinished(text: str) -> tuple[str, str]:
    """``text`` split before an escape sequence it ends in the middle of (at most 256 characters held back),
    so a stream cleaned chunk by chunk loses whole sequences, not halves."""
    match = _UNFINISHED.search(text, max(0, len(text) - 256))
    return (text[:match.start()], text[match.start():]) if match else (text, "")


def literal(value: object, *, keep: str = "", style: str = "") -> Text:
    """``value`` cleaned, as rich Text: printed exactly, never interpreted as markup or ``:emoji:``."""
    from rich.text import Text

    return Text(clean(value, keep=keep), style=style)


def echo(message: object, *, stderr: bool = False, keep: str = "\n\t") -> None:
    """Print a message that holds text from outside on stdout (or stderr), literally. Unstyled text needs
    nothing of rich (what its console would print is the same cleaned line), so this does not load it."""
    print(clean(message, keep=keep), file=sys.stderr if stderr else sys.stdout)


def error(message: str, hint: str | None = None) -> None:
    """``error: MESSAGE`` (and ``  hint: HINT``) on stderr, both cleaned: the CLI's one error format."""
    err.print(literal("error:", style="bold red") + literal(" " + message, keep="\n\t"))
    if hint:
        err.print(literal(f"  hint: {hint}", keep="\n\t"))


# rich costs ~70 ms to import; `--json` output and plain messages do not need it.
@cache
def console(stderr: bool) -> Console:
    """The real rich Console (for APIs such as Progress that need one, not the lazy stand-in)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class _Lazy:
    """Stands in for a rich Console and creates it on first use."""

    def __init__(self, stderr: bool):
        self._stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(console(self._stderr), name)


out: Any = _Lazy(stderr=False)
err: Any = _Lazy(stderr=True)


def as_json(value: Any) -> None:
    """Print ``value`` (models, lists of models, dicts) as indented JSON on stdout."""
    def dump(v: Any) -> Any:
        if hasattr(v, "model_dump"):  # a wire model (duck-typed: plain JSON never needs pydantic imported)
            return v.model_dump(mode="json")
        if isinstance(v, list):
            return [dump(x) for x in v]
        if isinstance(v, dict):
            return {k: dump(x) for k, x in v.items()}
        return v

    sys.stdout.write(json.dumps(dump(value), indent=2, default=str) + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "") -> None:
    """A borderless table; ``empty`` is printed instead when there are no rows."""
    from rich.table import Table

    rows = list(rows)
    if not rows and empty:
        err.print(empty)
        return
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(literal(v) for v in r))  # cells come from daemons, images and guests: never markup
    out.print(t)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``key: value`` lines for `show` commands."""
    width = max(len(k) for k, _ in pairs) if pairs else 0
    for k, v in pairs:
        out.print(literal(f"{k.ljust(width)}  {clean(v)}"))


def ago(ts: datetime | None) -> str:
    """``3m ago`` style age."""
    if ts is None:
        return ""
    secs = int((datetime.now(UTC) - ts).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{max(secs, 0)}s ago"


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}".replace(".0", "")
        value /= 1024
    return str(n)
