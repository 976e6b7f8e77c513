"""The embedded kernel catalog and name validation."""

from __future__ import annotations

import json

import pytest

from banger.errors import InvalidArgument, NotFound
from banger.kernels.catalog import DEFAULT_KERNEL, DebianSource, UrlSource, entries, get_entry, parse_catalog
from banger.names import validate_name


def test_default_entry_is_debian() -> None:
    entry = get_entry(DEFAULT_KERNEL)
    assert isinstance(entry.source, DebianSource)
    assert entry.source.suite == "bookworm"
    assert entry.arch == "x86_64"
    assert DEFAULT_KERNEL in [e.name for e in entries()]


def test_unknown_entry() -> None:
    with pytest.raises(NotFound, match="no kernel 'nope'"):
        get_entry("nope")


def _doc(**source: object) -> str:
    return json.dumps({"kernels": [{"name": "fc-6.1", "distro": "firecracker", "kernel_version": "6.1.102",
                                    "source": source}]})


def test_url_entry() -> None:
    cat = parse_catalog(_doc(kind="url", vmlinux_url="http://127.0.0.1/vmlinux", vmlinux_sha256="a" * 64))
    assert isinstance(cat.kernels[0].source, UrlSource)


@pytest.mark.parametrize("source", [
    {"kind": "url", "vmlinux_url": "http://x/v", "vmlinux_sha256": "nothex"},
    {"kind": "debian", "suite": "bookworm", "package_regex": "("},
    {"kind": "ftp"},
])
def test_bad_entries_are_refused(source: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="kernel catalog is invalid"):
        parse_catalog(_doc(**source))


def test_duplicate_names_refused() -> None:
    doc = json.loads(_doc(kind="url", vmlinux_url="http://x/v", vmlinux_sha256="a" * 64))
    doc["kernels"].append(doc["kernels"][0])
    with pytest.raises(InvalidArgument, match="duplicate"):
        parse_catalog(json.dumps(doc))


@pytest.mark.parametrize("name", ["debian-6.1", "a", "x" * 63, "fc1.2-3"])
def test_valid_names(name: str) -> None:
    assert validate_name("kernel", name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "A", "a/b", "..", "a..b", "x" * 64, "a b", "a;rm", "a."])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid kernel name"):
        validate_name("kernel", name)
