"""Debian version ordering, checked against dpkg itself."""

from __future__ import annotations

import pytest

from banger.host.run import run
from banger.kernels.debversion import compare_versions, split_version

PAIRS = [
    ("6.1.176-1", "6.1.170-3"),
    ("6.1.0-50", "6.1.0-9"),
    ("1.0~rc1-1", "1.0-1"),
    ("1:1.35.0-4+deb12u1+b1", "1.36.0-1"),
    ("1.35.0-4+deb12u1+b1", "1.35.0-4+deb12u1"),
    ("1.0", "1.0-0"),
    ("1.0a", "1.0+"),
    ("2.0", "10.0"),
    ("1.001", "1.1"),
    ("0:1.2", "1.2"),
    ("1.2~~", "1.2~"),
    ("1a1", "1a"),
    ("1.0-1~bpo1", "1.0-1"),
]


@pytest.mark.parametrize(("a", "b"), PAIRS)
async def test_matches_dpkg(a: str, b: str) -> None:
    for x, y in ((a, b), (b, a), (a, a)):
        mine = compare_versions(x, y)
        lt = (await run(["dpkg", "--compare-versions", x, "lt", y], check=False)).returncode == 0
        eq = (await run(["dpkg", "--compare-versions", x, "eq", y], check=False)).returncode == 0
        assert mine == (-1 if lt else 0 if eq else 1), (x, y)


def test_split() -> None:
    assert split_version("1:1.35.0-4+deb12u1+b1") == (1, "1.35.0", "4+deb12u1+b1")
    assert split_version("6.1.176-1") == (0, "6.1.176", "1")
    assert split_version("2.0") == (0, "2.0", "0")
    with pytest.raises(ValueError):
        split_version("not a version")
