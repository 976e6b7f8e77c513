"""Option types: a value the CLI can check is refused by click, as a usage error naming the flag and range.

Bounds come from ``banger.bounds``, which the wire's models read too, so the CLI and the daemon cannot drift
apart; sizes use the daemon's own parser and minimum. Nothing here imports pydantic (simple commands start
without it). A pydantic error that still comes from building a request is turned into the same kind of
usage error by :func:`usage_error` (called once, in ``main``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, get_args

import click

from banger import api, bounds
from banger.bounds import MAX_DISK, MIN_DISK, parse_size
from banger.errors import InvalidArgument
from banger.names import validate_name

if TYPE_CHECKING:
    from pydantic import ValidationError

MAX_TEXT = 4096  # PATH_MAX: no path, git ref or name a flag takes is longer


def brief(text: str, limit: int = 160) -> str:
    """``text`` cut in the middle when long, so a 100 kB argument is not echoed back whole."""
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


class _Brief(click.ParamType):
    """Shortens the value shown in click's own messages (which quote it in full)."""

    def fail(self, message: str, param: click.Parameter | None = None, ctx: click.Context | None = None) -> NoReturn:
        super().fail(brief(message), param, ctx)


class Range(_Brief, click.IntRange):
    """An integer range (click shows it in --help and in the error)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            int(value)
        except (TypeError, ValueError):  # click's own message here would not say what is accepted
            self.fail(f"{value!r} is not a whole number; use {self.min} to {self.max}", param, ctx)
        return super().convert(value, param, ctx)


class Choice(_Brief, click.Choice):
    """One of a fixed set of words."""


class File(_Brief, click.Path):
    """A click.Path that is never empty (which would read as "omitted") or longer than PATH_MAX."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(TEXT.convert(value, param, ctx), param, ctx)


class Text(_Brief):
    """Free text checked only by the daemon: not empty (that would read as "omitted") and not huge."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text:
            self.fail("must not be empty", param, ctx)
        if len(text) > MAX_TEXT:
            self.fail(f"is {len(text)} characters long; at most {MAX_TEXT} are accepted", param, ctx)
        return text


class Name(Text):
    """A VM, image or kernel name, checked by the same rule the daemon applies."""

    name = "name"

    def __init__(self, kind: str):
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = super().convert(value, param, ctx)
        try:
            return validate_name(self.kind, text)
        except InvalidArgument as exc:
            self.fail(f"{exc.message}; {exc.hint}" if exc.hint else exc.message, param, ctx)


class Size(_Brief):
    """A size such as ``16G`` (parsed like config.toml sizes), between ``minimum`` and ``maximum`` bytes."""

    name = "size"

    def __init__(self, minimum: int, maximum: int):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        accepted = f"use {_size(self.minimum)} to {_size(self.maximum)}, e.g. 16G"
        try:
            size = parse_size(str(value))
        except ValueError:
            self.fail(f"{str(value)!r} is not a size; {accepted}", param, ctx)
        if not self.minimum <= size <= self.maximum:
            self.fail(f"{str(value).strip()} is out of range; {accepted}", param, ctx)
        return str(value).strip()


class Sha256(_Brief):
    """A sha256 digest: 64 hex digits (compared case-insensitively by the daemon)."""

    name = "sha256"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
            self.fail(f"{text!r} is not a sha256 digest (64 hex digits)", param, ctx)
        return text


def _size(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


VCPU = Range(*bounds.VCPU)
MEMORY_MIB = Range(*bounds.MEMORY_MIB)
DISK_SIZE = Size(MIN_DISK, MAX_DISK)
RUNTIME = Choice(get_args(bounds.RuntimeChoice))
WORKSPACE_MODE = Choice(get_args(bounds.WorkspaceMode))
LOG_LINES = Range(0, 1_000_000)
TEXT = Text()
VM_NAME, IMAGE_NAME, KERNEL_NAME = Name("vm"), Name("image"), Name("kernel")
SHA256 = Sha256()
EXISTING_FILE = File(exists=True, dir_okay=False)


def usage_error(exc: ValidationError, ctx: click.Context | None) -> click.UsageError | None:
    """The usage error naming the flag behind the request field ``exc`` is about; None when ``exc`` is not
    about a request model (a reply that does not parse is not the user's doing)."""
    model = getattr(api, exc.title, None)
    if ctx is None or not (isinstance(model, type) and issubclass(model, api.Params)):
        return None
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = brief(str(first["msg"]).removeprefix("Value error, "))
    param = next((p for p in ctx.command.params if p.name == field), None)
    if param is None:
        return click.UsageError(f"{field or 'request'}: {message}", ctx)
    return click.BadParameter(message, ctx, param)
