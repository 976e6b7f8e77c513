"""System-test fixtures, staged ``netns -> vm_home -> vm``: real VMs under QEMU TCG in a private namespace.

On failure, the daemon log and every VM's serial console are printed, so a CI log says why a guest did
not come up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.testing.artifacts import VM_CONFIG, install_image, install_kernel
from banger.testing.daemon import Home
from banger.testing.netns import NetNS


@pytest.fixture
def netns() -> Iterator[NetNS]:
    with NetNS() as ns:
        yield ns


@pytest.fixture
def vm_home(netns: NetNS, default_kernel: Path, golden_image: Path, request: pytest.FixtureRequest) -> Iterator[Home]:
    """A BANGER_HOME whose daemon runs inside ``netns``, with the default kernel and golden image installed."""
    home = Home(netns=netns.name)
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(getattr(request, "param", VM_CONFIG))
    install_kernel(home.layout, default_kernel)
    install_image(home.layout, golden_image)
    try:
        yield home
    finally:
        if request.node.stash.get(FAILED, False):
            dump_diagnostics(home)
        home.cli("vm", "kill", *_vm_names(home), timeout=120) if _vm_names(home) else None
        home.cleanup()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


def _vm_names(home: Home) -> list[str]:
    try:
        proc = home.cli("vm", "list", "--json", timeout=60)
        return [v["name"] for v in json.loads(proc.stdout)] if proc.returncode == 0 else []
    except Exception:
        return []


def dump_diagnostics(home: Home) -> None:
    out = sys.stderr
    log = home.layout.daemon_log
    if log.exists():
        out.write(f"\n===== {log} (last 60 lines) =====\n")
        out.write("".join(log.read_text(errors="replace").splitlines(keepends=True)[-60:]))
    for console in sorted(home.layout.vms_dir.glob("*/console.log")):
        out.write(f"\n===== {console} (last 80 lines) =====\n")
        out.write("".join(console.read_text(errors="replace").splitlines(keepends=True)[-80:]))
