"""`banger doctor` reports every check, reads state without migrating it, and fails on missing essentials."""

from __future__ import annotations

import json
import sqlite3

from banger.testing.daemon import Home

EXPECTED = {"architecture", "kvm", "firecracker", "qemu", "vmm", "e2fsprogs", "debugfs", "mmdebstrap", "nft",
            "ssh client", "git", "loop devices", "device-mapper", "state store", "default image",
            "default kernel", "gpgv", "qemu-img", "jailer", "subordinate ids"}


def test_doctor_reports_every_check(home: Home) -> None:
    proc = home.cli("doctor", "--json")
    checks = json.loads(proc.stdout)
    assert EXPECTED <= {c["name"] for c in checks}
    for c in checks:
        assert c["status"] in {"PASS", "WARN", "FAIL"}
        assert c["detail"]
        if c["status"] != "PASS":
            assert c["fix"], f"{c['name']} needs a fix hint"
    failed = [c for c in checks if c["status"] == "FAIL"]
    assert proc.returncode == (1 if failed else 0)
    assert home.daemon_pid() is None, "doctor must not need or start the daemon"
    human = home.cli("doctor").stdout
    assert "architecture" in human and ("PASS" in human)


def test_doctor_reads_the_store_without_migrating(home: Home) -> None:
    home.layout.state_dir.mkdir(parents=True)
    sqlite3.connect(home.layout.db).close()
    checks = {c["name"]: c for c in json.loads(home.cli("doctor", "--json").stdout)}
    assert "schema v0" in checks["state store"]["detail"]
    with sqlite3.connect(home.layout.db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_doctor_fails_when_a_required_tool_is_missing(home: Home, tmp_path) -> None:
    # A PATH with python only: ssh, git, mkfs.ext4 ... vanish (doctor also looks in /usr/sbin and /sbin).
    import os
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python3")
    proc = home.cli("doctor", "--json", env={"PATH": str(bindir)})
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert checks["git"]["status"] == "FAIL" and "apt-get install git" in checks["git"]["fix"]
    assert proc.returncode == 1


def test_doctor_names_the_jailer_it_would_use_and_fails_only_when_it_is_required(home: Home) -> None:
    config = home.layout.config_file
    config.parent.mkdir(parents=True, exist_ok=True)
    for setting, status in (('"auto"', "WARN"), ("true", "FAIL"), ("false", "PASS")):
        config.write_text(f'jailer = {setting}\njailer_bin = "/nonexistent/jailer"\n')
        checks = {c["name"]: c for c in json.loads(home.cli("doctor", "--json").stdout)}
        assert checks["jailer"]["status"] == status, checks["jailer"]
        if status != "PASS":
            assert "setup.sh --firecracker" in checks["jailer"]["fix"]
    config.unlink()
