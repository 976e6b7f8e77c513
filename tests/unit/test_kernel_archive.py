"""Pure parts of the Debian archive client: deb822 parsing, the Release table, newest-version choice."""

from __future__ import annotations

import pytest

from banger.errors import IntegrityError, NotFound
from banger.kernels.debian_archive import (
    Package,
    check_suite,
    newest_matching,
    newest_named,
    packages_from_index,
    parse_stanzas,
    release_sha256,
)

RELEASE = """Origin: Debian
Codename: bookworm
Suite: oldstable
SHA256:
 0ed6d4c8891eb86358b94bb35d9e4da4aa0ed6d4c8891eb86358b94bb35d9e4d  1484322 contrib/Contents-all
 9E0B5AABB2465B3D2E7A7FE27F9913846277833F7A2826E7767ACCCFF5B588C5  8790396 main/binary-amd64/Packages.xz
"""

PACKAGES = """Package: linux-image-6.1.0-47-amd64
Version: 6.1.170-3
Filename: pool/a.deb
Size: 10
SHA256: AA
Description: old
 continuation line

Package: linux-image-6.1.0-50-amd64
Version: 6.1.176-1
Filename: pool/b.deb
Size: 20
SHA256: bb

Package: linux-image-6.1.0-9-amd64
Version: 6.1.27-1
Filename: pool/c.deb
Size: 30
SHA256: cc

Package: linux-image-6.1.0-50-amd64-dbg
Version: 6.1.176-1
Filename: pool/d.deb
Size: 40
SHA256: dd

Package: broken
Version: 1
"""


def test_release_table() -> None:
    assert release_sha256(RELEASE, "main/binary-amd64/Packages.xz") == (
        "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5", 8790396)
    with pytest.raises(IntegrityError, match="does not list"):
        release_sha256(RELEASE, "main/binary-arm64/Packages.xz")


def test_suite_must_match() -> None:
    check_suite(RELEASE, "bookworm")
    check_suite(RELEASE, "oldstable")
    with pytest.raises(IntegrityError, match="not 'trixie'"):
        check_suite(RELEASE, "trixie")


def test_stanzas_and_newest() -> None:
    assert parse_stanzas(PACKAGES)[0]["Description"] == "old\ncontinuation line"
    pkgs = packages_from_index(PACKAGES)
    assert len(pkgs) == 4 and pkgs[0].sha256 == "aa"
    best = newest_matching(pkgs, r"^linux-image-6\.1\.0-[0-9]+-amd64$")
    assert best == Package("linux-image-6.1.0-50-amd64", "6.1.176-1", "pool/b.deb", "bb", 20)
    assert newest_named(pkgs, "linux-image-6.1.0-9-amd64").size == 30
    with pytest.raises(NotFound):
        newest_named(pkgs, "busybox-static")
