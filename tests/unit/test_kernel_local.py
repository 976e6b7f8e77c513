"""The local kernel store: import, list, get, remove, overwrite rules, and nothing left behind on failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from banger.errors import AlreadyExists, IntegrityError, InvalidArgument, NotFound
from banger.host.http import sha256_file
from banger.kernels import local

# Any x86-64 ELF passes the importer's check; a real kernel is not needed to test the store.
ELF = Path(shutil.which("true") or "/bin/true")


def _leftovers(kernels_dir: Path) -> list[str]:
    return sorted(p.name for p in kernels_dir.iterdir()) if kernels_dir.exists() else []


async def test_import_list_get_remove(tmp_path: Path) -> None:
    kdir = tmp_path / "kernels"
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"initrd")
    manifest = await local.import_kernel(kdir, "mine-1.0", ELF, initrd)
    assert manifest.source == "import"
    assert manifest.files == {"vmlinux": sha256_file(ELF), "initrd.img": sha256_file(initrd)}
    assert (kdir / "mine-1.0" / "vmlinux").read_bytes() == ELF.read_bytes()
    assert [m.name for m in local.list_kernels(kdir)] == ["mine-1.0"]
    assert local.get(kdir, "mine-1.0") == manifest
    local.remove(kdir, "mine-1.0")
    assert _leftovers(kdir) == []
    with pytest.raises(NotFound, match="banger kernel pull mine-1.0"):
        local.get(kdir, "mine-1.0")
    with pytest.raises(NotFound):
        local.remove(kdir, "mine-1.0")


async def test_overwrite_needs_force(tmp_path: Path) -> None:
    kdir = tmp_path / "kernels"
    await local.import_kernel(kdir, "k", ELF)
    with pytest.raises(AlreadyExists) as err:
        await local.import_kernel(kdir, "k", ELF)
    assert "--force" in str(err.value)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"new")
    await local.import_kernel(kdir, "k", ELF, initrd, force=True)
    assert local.get(kdir, "k").has("initrd.img")
    assert _leftovers(kdir) == ["k"]


async def test_refuses_non_elf_and_bad_names(tmp_path: Path) -> None:
    kdir = tmp_path / "kernels"
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"MZ" + b"\0" * 200)
    with pytest.raises(IntegrityError, match="not an ELF"):
        await local.import_kernel(kdir, "k", bogus)
    with pytest.raises(InvalidArgument):
        await local.import_kernel(kdir, "../escape", ELF)
    with pytest.raises(InvalidArgument, match="not a file"):
        await local.import_kernel(kdir, "k", tmp_path / "nope")
    assert _leftovers(kdir) == []
    assert not (tmp_path / "escape").exists()


async def test_failure_inside_staging_leaves_nothing(tmp_path: Path) -> None:
    kdir = tmp_path / "kernels"
    with pytest.raises(RuntimeError):
        async with local.staged(kdir, "k", False) as stage:
            (stage / "vmlinux").write_bytes(b"half")
            raise RuntimeError("boom")
    assert _leftovers(kdir) == []


def test_list_ignores_strays(tmp_path: Path) -> None:
    kdir = tmp_path / "kernels"
    (kdir / ".stage-x-123").mkdir(parents=True)
    (kdir / "empty").mkdir()
    assert local.list_kernels(kdir) == []
    assert local.list_kernels(tmp_path / "absent") == []
