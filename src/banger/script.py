"""Building shell scripts: every value quoted by one function.

Scripts banger runs in a guest or on the host are shell code written by banger (templates, constant
lines) with values filled in from outside (paths, refs, names, messages). The values only ever enter
through :func:`quote`, which makes each one a single word meaning exactly itself::

    s = Script()
    s.cmd("cd", guest)                                   # cd '/root/my repo'
    s.line("git update-ref refs/heads/{} {}", branch, head)
    s.say(f"banger: {guest} is not empty")                # printf '%s\\n' '...' >&2
    s.render()

Templates are ``str.format`` templates whose every ``{}`` becomes a quoted word; literal braces in the
shell code are doubled (``{{``). Templates and :meth:`Script.raw` code are typed ``LiteralString``: they
are banger's own text, never built from a value (an f-string there defeats the point of this module).
"""

from __future__ import annotations

import os
import shlex
import string
from collections.abc import Sequence
from typing import Any, LiteralString

from banger.errors import InvalidArgument

Value = str | int | os.PathLike[str]


def quote(value: Value) -> str:
    """``value`` as one POSIX shell word that stands for exactly itself.

    NUL cannot be part of any shell word or argv entry, so a value holding one is refused rather than
    silently cut short.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if "\0" in text:
        raise InvalidArgument(f"{text!r} contains a NUL byte, which no command argument can hold")
    return shlex.quote(text)


class _Quoting(string.Formatter):
    """``str.format`` where every replacement field is a quoted word and nothing else (no specs, no !r)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec:
            raise ValueError("script templates take no format specs: every value is quoted as is")
        return quote(value)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            raise ValueError("script templates take no conversions: every value is quoted as is")
        return value


_FORMATTER = _Quoting()


def fill(template: LiteralString, *values: Value, **named: Value) -> str:
    """``template`` with each ``{}``/``{name}`` replaced by the quoted value."""
    return _FORMATTER.vformat(template, values, named)


def shell_command(argv: Sequence[str]) -> str:
    """The guest shell command for a CLI's ``-- ARGS``: one argument is a shell string, more are argv.

    ``-- 'make test | tee log'`` is run by the guest's shell as written (like ``ssh host CMD``);
    ``-- python -c "print('a b')"`` keeps its three arguments exactly (each quoted).
    """
    if not argv:
        raise InvalidArgument("no command given")
    return argv[0] if len(argv) == 1 else " ".join(quote(a) for a in argv)


class Script:
    """A shell script built line by line (``set -eu`` first unless ``strict=False``)."""

    def __init__(self, *, strict: bool = True):
        self._lines: list[str] = ["set -eu"] if strict else []

    def raw(self, code: LiteralString) -> Script:
        """A constant line of banger's own shell code (no values in it)."""
        self._lines.append(code)
        return self

    def line(self, template: LiteralString, *values: Value, **named: Value) -> Script:
        """A line from a template whose fields are filled with quoted values."""
        self._lines.append(fill(template, *values, **named))
        return self

    def cmd(self, *argv: Value) -> Script:
        """A simple command: every word quoted."""
        self._lines.append(" ".join(quote(a) for a in argv))
        return self

    def say(self, message: str) -> Script:
        """Print ``message`` on stderr verbatim (``printf %s``: no echo escapes, no expansion)."""
        return self.line("printf '%s\\n' {} >&2", message)

    def render(self) -> str:
        """The script text, newline-terminated."""
        return "\n".join(self._lines) + "\n"

