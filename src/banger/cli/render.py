"""Output for people (rich tables) and for scripts (``--json``), in one place."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from rich.console import Console


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
        if isinstance(v, BaseModel):
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
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``key: value`` lines for `show` commands."""
    width = max(len(k) for k, _ in pairs) if pairs else 0
    for k, v in pairs:
        out.print(f"{k.ljust(width)}  {'' if v is None else v}", markup=False)


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
