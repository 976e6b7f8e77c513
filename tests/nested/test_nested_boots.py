"""Nested Firecracker boots in a row, all of which must succeed (no retry): ten by default.

Each nested boot takes 60-130 s under TCG, so this is scripts/test-nested.sh's (BANGER_NESTED_BOOTS=N sets
how many) and not part of every run: the whole suite's nested tier already boots four Firecracker guests
in a row in test_nested_kvm.py (create, two `vm run`s, start; after the boot probe's), which is what fits
its time budget.
"""

from __future__ import annotations

import os
import statistics

import pytest

from banger.testing.nested import KvmHost, assert_nothing_left

pytestmark = [pytest.mark.system, pytest.mark.timeout(3600)]

BOOTS = int(os.environ.get("BANGER_NESTED_BOOTS", "10"))


def test_firecracker_boots_in_a_row(kvm_host: KvmHost) -> None:
    times = []
    for i in range(BOOTS):
        out = kvm_host.banger("vm", "run", "--rm", "--", "true")
        assert out.returncode == 0, f"boot {i + 1} of {BOOTS} failed:\n{out.stderr}\n{kvm_host.diagnostics()}"
        times.append(out.seconds)
    print(f"vm run --rm -- true x{BOOTS} under nested Firecracker: median {statistics.median(times):.1f}s, "
          f"min {min(times):.1f}s, max {max(times):.1f}s ({', '.join(f'{t:.1f}' for t in times)})")
    assert_nothing_left(kvm_host)
