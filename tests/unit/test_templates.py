"""Template bookkeeping on real directories (no VM): the key, listing, and what prune keeps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from banger.config import Config
from banger.daemon import templates
from banger.daemon.vm_handles import WorkDisk, write_root_disk
from banger.errors import HostError
from banger.host.storage import RootDisk


def service(tmp_path: Path) -> templates.TemplateService:
    return templates.TemplateService(Config(), tmp_path / "templates", tmp_path / "vms", None, None)  # type: ignore[arg-type]


def fake_template(svc: templates.TemplateService, tmp_path: Path, name: str, **key_changes: Any) -> Path:
    image_dir = tmp_path / f"image-{name}"
    image_dir.mkdir(exist_ok=True)
    (image_dir / "manifest.json").write_text(json.dumps({"rootfs_sha256": "abc"}))
    kernel_dir = tmp_path / "kernel"
    kernel_dir.mkdir(exist_ok=True)
    key = templates.TemplateKey(image=name, image_dir=str(image_dir), image_rootfs_sha256="abc", kernel="k",
                                kernel_dir=str(kernel_dir), vcpu=2, memory_mib=512, disk_size=1 << 30,
                                runtime="qemu", accel="tcg",
                                vmm=asyncio.run(templates.qemu_version("qemu-system-x86_64")),
                                agent=svc._agent, config="c")
    key = templates.TemplateKey(**{**key.__dict__, **key_changes})
    path = svc.dir / key.digest
    path.mkdir(parents=True)
    for f in (templates.MEMORY, templates.STATE, templates.ROOT, templates.WORK):
        (path / f).write_bytes(b"x")
    (path / templates.META).write_text(json.dumps({"key": key.__dict__, "image_name": name}))
    assert svc.find(key) is not None
    return path


def test_prune_keeps_current_and_used_templates(tmp_path: Path) -> None:
    svc = service(tmp_path)
    current = fake_template(svc, tmp_path, "current")
    stale_agent = fake_template(svc, tmp_path, "old-agent", agent="0" * 16)
    rebuilt = fake_template(svc, tmp_path, "rebuilt", image_rootfs_sha256="other")
    used = fake_template(svc, tmp_path, "used", vmm="QEMU emulator version 1.0")
    vm_dir = tmp_path / "vms" / "a1b2c3d4e5f6"
    vm_dir.mkdir(parents=True)
    write_root_disk(vm_dir, RootDisk(vm_dir / "root.qcow2", "qcow2", "qcow2"),
                    WorkDisk(vm_dir / "work.qcow2", "qcow2", used.name))
    listed = {t["id"]: t for t in svc.entries()}
    assert listed[used.name]["vms"] == ["a1b2c3d4e5f6"] and listed[current.name]["vms"] == []

    removed = asyncio.run(svc.prune())
    assert sorted(removed) == sorted([stale_agent.name, rebuilt.name])
    assert current.exists() and used.exists()
    assert asyncio.run(svc.prune(everything=True)) == [current.name]
    assert used.exists(), "a template a VM stands on is never removed"


def test_the_key_changes_with_anything_a_clone_inherits() -> None:
    base = templates.TemplateKey(image="i", image_dir="/d", image_rootfs_sha256="s", kernel="k", kernel_dir="/k",
                                 vcpu=2, memory_mib=512, disk_size=1, runtime="qemu", accel="tcg", vmm="v",
                                 agent="a", config="c")
    for field, value in (("vcpu", 4), ("memory_mib", 1024), ("disk_size", 2), ("vmm", "w"), ("agent", "b"),
                         ("image_rootfs_sha256", "t"), ("kernel", "k2"), ("accel", "kvm"), ("config", "d")):
        assert templates.TemplateKey(**{**base.__dict__, field: value}).digest != base.digest


def test_a_claimed_template_is_not_pruned(tmp_path: Path) -> None:
    svc = service(tmp_path)
    path = fake_template(svc, tmp_path, "claimed")
    svc.claim(path.name)
    assert asyncio.run(svc.prune(everything=True)) == [] and path.exists()
    svc.release(path.name)
    assert asyncio.run(svc.prune(everything=True)) == [path.name] and not path.exists()


def test_a_qemu_that_does_not_answer_is_a_host_error(tmp_path: Path, monkeypatch: Any) -> None:
    # A create whose template key could not be made boots cold with a note (BangerError), where a raw
    # TimeoutExpired was an internal error that failed the create (seen in the nested tier).
    slow = tmp_path / "qemu-slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(templates, "VERSION_TIMEOUT", 0.5)
    with pytest.raises(HostError, match="did not answer within 0.5s"):
        asyncio.run(templates.qemu_version(str(slow)))
    assert asyncio.run(templates.qemu_version("qemu-system-x86_64")).startswith("QEMU emulator version")
