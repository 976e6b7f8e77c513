"""A VM name can never pass for a VM id, and console offsets are never negative: through the real CLI and
client against a real bangerd."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger import api
from banger.errors import InvalidArgument
from banger.images.manifest import ImageManifest, write_manifest
from banger.model import VM, Image, VMSpec
from banger.names import validate_name
from banger.store.db import open_db
from banger.store.repo import Store
from banger.testing.daemon import Home


@pytest.mark.parametrize("name", ["0123456789ab", "deadbeefcafe", "000000000000"])
def test_a_vm_name_shaped_like_an_id_is_refused_by_the_cli(home: Home, name: str) -> None:
    res = home.cli("vm", "create", "--name", name, "--no-start")
    assert res.returncode == 2, res.stderr
    assert f"invalid vm name '{name}'" in res.stderr and "VM id" in res.stderr
    assert "Traceback" not in res.stderr
    assert home.cli("vm", "list", "--json", check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["0123456789abc", "0123456789a", "0123456789-b", "deadbeefcafg", "brisk-otter"])
def test_names_near_the_id_shape_stay_valid(name: str) -> None:
    assert validate_name("vm", name) == name


def test_the_id_shape_is_only_refused_for_vms() -> None:
    assert validate_name("image", "0123456789ab") == "0123456789ab"
    with pytest.raises(InvalidArgument, match="VM id"):
        validate_name("vm", "0123456789ab")


def test_negative_log_offsets_are_refused(home: Home, tmp_path: Path) -> None:
    home.start_daemon()
    home.stop_daemon()
    store = Store(open_db(home.layout.db))
    image_dir = home.layout.images_dir / "img"
    image_dir.mkdir(parents=True)
    manifest = ImageManifest(name="img", source="register")
    write_manifest(image_dir, manifest)
    store.put_image(Image(name="img", source="register", dir=str(image_dir), manifest=manifest.model_dump(mode="json")))
    (tmp_path / "console.log").write_bytes(b"0123456789")
    store.insert_vm(VM(id="a1b2c3d4e5f6", name="logged", spec=VMSpec(image="img"), state="stopped",
                       vm_dir=str(tmp_path)))
    store.close()
    home.start_daemon()
    with home.client() as c:
        with pytest.raises(InvalidArgument, match="offset"):
            c.call_raw(api.VM_LOGS, {"ref": "logged", "offset": -1})
        with pytest.raises(InvalidArgument, match="offset"):  # the typed client refuses before sending
            c.vm_logs("logged", -5)
        assert c.vm_logs("logged", 4).data == "456789"
        assert c.vm_logs("logged", 0).offset == 10
