"""Every host program banger or its tests run has a package in scripts/setup.sh (or ships with Debian).

A bare Debian 12 has only its Essential and Priority-required packages; anything else a program needs must
be in setup.sh's lists, or the README's commands fail on a new machine the way `cpio` once did. This is
the static half (program names in the source); the session fixture in ``tests/conftest.py`` checks every
program actually resolved during the run.
"""

from __future__ import annotations

from pathlib import Path

from banger.host.run import OPTIONAL_TOOLS
from banger.testing import tools

ROOT = Path(__file__).resolve().parents[2]


def test_every_program_named_in_the_source_is_installed_by_setup() -> None:
    programs = tools.scan_sources([ROOT / "src", ROOT / "tests", ROOT / "bench"]) - OPTIONAL_TOOLS
    assert {"git", "mkfs.ext4", "cpio", "nft"} <= programs, "the scan must see the programs it guards"
    allowed = tools.with_dependencies(tools.setup_packages(ROOT / "scripts/setup.sh") | tools.essential_packages())
    findings = tools.check_programs(programs, allowed)
    assert not findings, "\n".join(f"{f.program}: {f.problem}" for f in findings)


def test_a_package_missing_from_setup_is_reported() -> None:
    allowed = tools.with_dependencies(tools.setup_packages(ROOT / "scripts/setup.sh") - {"cpio"})
    findings = tools.check_programs({"cpio", "no-such-program-x"}, allowed)
    assert [f.program for f in findings] == ["cpio", "no-such-program-x"]
    assert "'cpio'" in findings[0].problem and "setup.sh" in findings[0].problem
