"""A bad config.toml stops the CLI with a message naming the key, before any daemon starts."""

from __future__ import annotations

import pytest

from banger.testing.daemon import Home


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('bridge_ip = "300.1.1.1"', "bridge_ip"),
        ('cidr = "172.30.0.0/30"', "cidr"),
        ('runtime = "vmware"', "runtime"),
        ("tap_pool_size = -1", "tap_pool_size"),
        ('auto_stop_stale_after = "soon"', "auto_stop_stale_after"),
        ("[vm_defaults]\nvcpu = 0", "vm_defaults.vcpu"),
        ('[vm_defaults]\ndisk_size = "lots"', "vm_defaults.disk_size"),
        ('[[file_sync]]\nhost = "a"\nguest = "b"\nmode = "rwx"', "file_sync[0].mode"),
        ('[[file_sync]]\nguest = "b"', "file_sync[0].host"),
        ('colour = "blue"', "colour"),
    ],
)
def test_config_error_names_the_key(home: Home, toml: str, key: str) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(toml + "\n")
    proc = home.cli("vm", "list")
    assert proc.returncode == 2, proc.stderr
    assert f"key {key!r}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert home.daemon_pid() is None, "no daemon may start on a bad config"


def test_invalid_toml_syntax(home: Home) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text("runtime = \n")
    proc = home.cli("vm", "list")
    assert proc.returncode == 2
    assert "not valid TOML" in proc.stderr


def test_valid_config_is_accepted(home: Home) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(
        'runtime = "qemu"\ncidr = "10.77.0.0/24"\nbridge_ip = "10.77.0.1"\n[vm_defaults]\nmemory_mib = 2048\n'
        '[[file_sync]]\nhost = "~/.gitconfig"\nguest = ".gitconfig"\n'
    )
    home.cli("vm", "list", check=True)
