"""Simple commands start fast: against a real daemon, they never import pydantic, rich or asyncio.

(How fast is measured by bench/rpc_latency.py, beside bare `python -c pass`; this checks the cause.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from banger.testing.artifacts import seed_stopped_vms
from banger.testing.daemon import Home

HEAVY = ("pydantic", "rich", "asyncio", "asyncssh", "httpx", "banger.wire", "banger.model", "banger.config")
# Run the CLI's real entry point, then report which of HEAVY it had loaded by the time it exited.
PROBE = """
import atexit, json, sys
heavy = json.loads(sys.argv.pop(1))
atexit.register(lambda: sys.stderr.write("LOADED " + json.dumps(sorted(m for m in heavy if m in sys.modules)) + "\\n"))
from banger.cli import main
sys.argv[0] = "banger"
main()
"""

# `--help` of a group is not here: listing subcommands' help loads their modules.
SIMPLE = [("vm", "list", "--json"), ("ps", "--json"), ("vm", "show", "alpha", "--json"), ("image", "list", "--json"),
          ("kernel", "list", "--json")]


@pytest.fixture
def daemon_with_vms(home: Home) -> Home:
    seed_stopped_vms(home.layout, {"a1b2c3d4e5f6": "alpha", "b1b2c3d4e5f6": "beta"})
    home.start_daemon()
    return home


def _loaded(home: Home, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), *args], env=home.env,
                          capture_output=True, text=True, timeout=60)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED "))
    return proc, json.loads(line.removeprefix("LOADED "))


@pytest.mark.parametrize("args", SIMPLE, ids=" ".join)
def test_a_simple_command_imports_no_heavy_module(daemon_with_vms: Home, args: tuple[str, ...]) -> None:
    proc, loaded = _loaded(daemon_with_vms, *args)
    assert proc.returncode == 0, proc.stderr
    assert loaded == [], f"`banger {' '.join(args)}` imported {loaded}"


def test_the_fast_listing_is_the_daemon_s_json(daemon_with_vms: Home) -> None:
    proc, _ = _loaded(daemon_with_vms, "vm", "list", "--json")
    vms = json.loads(proc.stdout)
    assert sorted(v["name"] for v in vms) == ["alpha", "beta"]
    assert all(v["state"] == "stopped" and v["spec"]["image"] == "img" for v in vms)


def test_an_export_loads_no_models_even_when_refused(daemon_with_vms: Home) -> None:
    """`vm workspace export` is plain JSON both ways (a successful one is timed by bench/workspace.py):
    against a stopped VM the daemon's refusal comes back with no model loaded (only rich, for the
    error's colour)."""
    proc, loaded = _loaded(daemon_with_vms, "vm", "workspace", "export", "alpha")
    assert proc.returncode != 0 and "alpha" in proc.stderr and "Traceback" not in proc.stderr
    assert set(loaded) <= {"rich"}, f"`banger vm workspace export` imported {loaded}"


def test_the_probe_sees_a_heavy_import(daemon_with_vms: Home) -> None:
    """The check above can fail: a command that builds models (the table of `vm list`) does import them."""
    proc, loaded = _loaded(daemon_with_vms, "vm", "list")
    assert proc.returncode == 0, proc.stderr
    assert "pydantic" in loaded and "alpha" in proc.stdout
