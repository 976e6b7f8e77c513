"""Bad option values through the real CLI and a real bangerd: a short usage error, never a traceback.

The options come from walking banger's real click command tree, so an option added later is covered
without touching this file. The daemon is set up so that anything slipping past the checks fails fast:
the runtime is QEMU, Firecracker is a path that is not there, and the default image is a promoted name that
does not exist (the configured ``default_image_name`` alone would not do: a missing golden image is built).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from banger import api
from banger.cli.context import Context, pass_ctx
from banger.cli.lazy import LazyGroup
from banger.cli.main import BangerGroup, cli
from banger.daemon.image_service import DEFAULT_SETTING
from banger.model import VM
from banger.store.db import open_db
from banger.store.repo import Store
from banger.testing.artifacts import seed_stopped_vms
from banger.testing.daemon import Home
from banger.testing.netns import NetNS

MAX_LINES = 5  # click's usage error is four (usage, "Try ...", blank, error); a banger error two, after a note
HUGE_TEXT = "x" * 100_000  # below Linux's 128 KiB limit on one argv string
TEXT = ["", "-1", "ünïcödé-名前", str(10**30), HUGE_TEXT]
CHOICE = ["", "-1", "bogus", "ünïcödé", HUGE_TEXT]
SIZE = ["", "-1", "0", "1M", "abc", "ünï", str(10**30), "99999999T", HUGE_TEXT]
CONFIG = 'default_image_name = "no-such-image"\nruntime = "qemu"\nfirecracker_bin = "/nonexistent/firecracker"\n'


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    option: click.Option
    strict: bool  # the CLI itself must refuse the value: exit 2, the flag named


def walk(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under ``cmd`` with the words that reach it (aliases once)."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        seen: set[int] = set()
        subs = cmd.all_commands(click.Context(cmd)) if isinstance(cmd, LazyGroup) else cmd.commands
        for name, sub in sorted(subs.items()):
            if id(sub) not in seen:
                seen.add(id(sub))
                yield from walk(sub, (*path, name))


def value_options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.is_flag and not p.count]


def is_number(opt: click.Option) -> bool:
    return isinstance(opt.type, click.types.IntParamType | click.types.FloatParamType)


def bad_values(opt: click.Option) -> tuple[list[str], bool]:
    """The values to try for ``opt`` and whether the CLI must refuse each itself (exit 2, flag named)."""
    if is_number(opt):
        low, high = getattr(opt.type, "min", None), getattr(opt.type, "max", None)
        ends = [str(v) for v in (low - 1 if low is not None else None, high + 1 if high is not None else None)
                if v is not None]
        return sorted({*ends, "-1", str(10**30), "", "ünï", "1.5", HUGE_TEXT}), True
    if isinstance(opt.type, click.Choice):
        return CHOICE, True
    if opt.type.name == "size":
        return SIZE, True
    return TEXT, False


def harmless(param: click.Parameter, files: Path) -> str:
    """A value for a required argument or option that is not under test: nothing by that name exists."""
    if isinstance(param.type, click.Path) and param.type.exists:
        return str(files / "empty")
    if param.name == "output":
        return str(files / "out.tar.zst")
    if param.name == "source":
        return "/nonexistent/none.tar.zst"  # a bundle path: fails at once, where a bare word could hit a registry
    if param.name == "path":
        return str(files)
    return "no-such-thing"


def cases(files: Path) -> Iterator[Case]:
    for path, cmd in walk(cli):
        options = value_options(cmd)
        for opt in options:
            args = [harmless(p, files) for p in cmd.params if isinstance(p, click.Argument) and p.required]
            others = [a for o in options if o is not opt and o.required for a in (o.opts[0], harmless(o, files))]
            values, strict = bad_values(opt)
            for value in values:
                yield Case((*path, *args, *others, opt.opts[-1], value), opt, strict)


def problem(home: Home, case: Case) -> str | None:
    """What is wrong with how the CLI took ``case``, or None."""
    shown = " ".join(a if len(a) < 40 else f"{a[:12]}...({len(a)} chars)" for a in case.argv)
    try:
        res = home.cli(*case.argv, timeout=60)
    except subprocess.TimeoutExpired:
        return f"banger {shown}: still running after 60s"
    lines = res.stderr.strip().splitlines()
    if "Traceback" in res.stderr:
        return f"banger {shown}: traceback:\n{res.stderr[-3000:]}"
    if res.returncode == 0:
        return f"banger {shown}: exit 0 for a bad value"
    if len(lines) > MAX_LINES:
        return f"banger {shown}: {len(lines)} lines on stderr:\n{res.stderr[:3000]}"
    if case.strict and (res.returncode != 2 or not any(o in res.stderr for o in case.option.opts)):
        return f"banger {shown}: exit {res.returncode}, want 2 and {case.option.opts} named:\n{res.stderr[:3000]}"
    return None


@pytest.fixture
def served() -> Iterator[Home]:
    # Inside a namespace of its own: should a value slip through to a real create, its bridge and TAP
    # stay there, never in the host's namespace.
    with NetNS() as ns:
        home = Home(netns=ns.name)
        try:
            home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
            home.layout.config_file.write_text(CONFIG)
            store = Store(open_db(home.layout.db))
            store.set_setting(DEFAULT_SETTING, "no-default-image")  # not the golden name: never built or pulled
            store.close()
            home.start_daemon()
            yield home
        finally:
            home.cleanup()


def fetched_or_built(home: Home) -> list[str]:
    """Stages of operations that built or downloaded something (none may: every value here is bad)."""
    with home.client() as c:
        return [f"{o.kind} {o.target}: {s}" for o in c.operations() for s in o.stages
                if s.startswith(("building", "pulling", "downloading", "bootstrapping"))]


def bounded(opt: click.Option) -> bool:
    return getattr(opt.type, "min", None) is not None and getattr(opt.type, "max", None) is not None


def test_every_numeric_option_has_a_range() -> None:
    unbounded = [f"{' '.join(path)} {opt.opts[-1]}" for path, cmd in walk(cli) for opt in value_options(cmd)
                 if is_number(opt) and not bounded(opt)]
    assert not unbounded, f"numeric options without both bounds: {unbounded}"


def test_bad_values_end_in_a_short_error(served: Home, tmp_path: Path) -> None:
    (tmp_path / "empty").touch()
    all_cases = list(cases(tmp_path))
    assert len({c.option.opts[-1] for c in all_cases}) >= 10, "the walk found too few options"
    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(lambda c: problem(served, c), all_cases) if p]
    assert not problems, f"{len(problems)} of {len(all_cases)} calls went wrong:\n\n" + "\n\n".join(problems[:20])
    assert served.cli("vm", "list", "--json", check=True).stdout.strip() == "[]"
    assert fetched_or_built(served) == []


def test_actions_say_what_they_did(served: Home, tmp_path: Path) -> None:
    served.stop_daemon()
    seed_stopped_vms(served.layout, {"a1b2c3d4e5f6": "doomed", "b1b2c3d4e5f6": "idle"})
    served.start_daemon()
    stopped = served.cli("vm", "stop", "idle", check=True)
    assert stopped.stdout.strip() == "idle: stopped", stopped
    deleted = served.cli("vm", "delete", "doomed", "idle", check=True)
    assert deleted.stdout.strip().splitlines() == ["doomed: deleted", "idle: deleted"], deleted
    assert served.cli("vm", "list", "--json", check=True).stdout.strip() == "[]"


def test_a_request_the_option_types_let_through_is_a_usage_error_naming_the_flag() -> None:
    """The one fallback in BangerGroup: a request model refusing a value names the flag; a model that is
    not a request (a reply) is not blamed on the user."""
    group = BangerGroup("banger")

    @group.command("make")
    @click.option("--cpus", "vcpu", type=int)
    @pass_ctx
    def make(ctx: Context, vcpu: int) -> None:
        api.VMCreate(vcpu=vcpu)

    @group.command("reply")
    @pass_ctx
    def reply(ctx: Context) -> None:
        VM.model_validate({})

    refused = CliRunner().invoke(group, ["make", "--cpus", "0"])
    assert refused.exit_code == 2, refused.output
    assert "Invalid value for '--cpus'" in refused.output and "greater than or equal to 1" in refused.output
    assert isinstance(CliRunner().invoke(group, ["reply"]).exception, ValidationError)
