"""`banger kernel ...` end to end: the real CLI, a real bangerd, a real Debian kernel and real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from banger.model import VM, VMSpec
from banger.store.db import open_db
from banger.store.repo import Store
from banger.testing.daemon import Home
from banger.wire import Operation


def _json(home: Home, *args: str) -> Any:
    return json.loads(home.cli(*args, "--json", check=True).stdout)


def _import(home: Home, name: str, kernel_dir: Path, initrd: bool = True) -> None:
    args = ["kernel", "import", name, "--vmlinux", str(kernel_dir / "vmlinux")]
    home.cli(*args, *(["--initrd", str(kernel_dir / "initrd.img")] if initrd else []), check=True)


def _leftovers(home: Home) -> list[str]:
    return sorted(p.name for p in home.layout.kernels_dir.iterdir())


def test_list_available_shows_the_catalog(home: Home) -> None:
    text = home.cli("kernel", "list", "--available", check=True).stdout
    assert "debian-6.1" in text and "available" in text
    listing = _json(home, "kernel", "list", "--available")
    assert listing["kernels"] == []
    assert [e["name"] for e in listing["available"]] == ["debian-6.1"]
    assert listing["available"][0]["source"]["kind"] == "debian"


def test_import_show_rm_a_real_kernel(home: Home, default_kernel: Path) -> None:
    _import(home, "k1", default_kernel)
    shown = _json(home, "kernel", "show", "k1")
    assert shown["source"] == "import"
    manifest = json.loads((default_kernel / "manifest.json").read_text())
    assert shown["manifest"]["files"]["vmlinux"] == manifest["files"]["vmlinux"]
    assert shown["manifest"]["files"]["initrd.img"] == manifest["files"]["initrd.img"]
    assert (Path(shown["dir"]) / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert "k1" in home.cli("kernel", "show", "k1", check=True).stdout
    assert [k["name"] for k in _json(home, "kernel", "list")] == ["k1"]
    home.cli("kernel", "rm", "k1", check=True)
    assert _json(home, "kernel", "list") == []
    assert _leftovers(home) == []
    missing = home.cli("kernel", "show", "k1")
    assert missing.returncode == 3 and "not installed" in missing.stderr


def test_import_refuses_a_non_elf_and_leaves_nothing(home: Home, default_kernel: Path) -> None:
    bad = home.cli("kernel", "import", "k2", "--vmlinux", str(default_kernel / "initrd.img"))
    assert bad.returncode == 8, bad.stderr
    assert "error:" in bad.stderr and "Traceback" not in bad.stderr
    assert _json(home, "kernel", "list") == []
    assert _leftovers(home) == []
    invalid = home.cli("kernel", "import", "../evil", "--vmlinux", str(default_kernel / "vmlinux"))
    assert invalid.returncode == 2 and "invalid kernel name" in invalid.stderr


def test_pull_refuses_without_force_when_present(home: Home, default_kernel: Path) -> None:
    _import(home, "debian-6.1", default_kernel, initrd=False)
    before = _json(home, "kernel", "show", "debian-6.1")
    refused = home.cli("kernel", "pull", "debian-6.1")
    assert refused.returncode == 4, refused.stderr
    assert "already installed" in refused.stderr and "--force" in refused.stderr
    assert _json(home, "kernel", "show", "debian-6.1") == before
    unknown = home.cli("kernel", "pull", "no-such-kernel")
    assert unknown.returncode == 3 and "catalog" in unknown.stderr


def test_rm_refused_while_a_vm_boots_the_kernel(home: Home, default_kernel: Path, tmp_path: Path) -> None:
    _import(home, "k3", default_kernel, initrd=False)
    _import(home, "k4", default_kernel, initrd=False)
    rootfs = tmp_path / "root.ext4"
    (tmp_path / "tree").mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tmp_path / "tree"), str(rootfs), "16M"], check=True)
    home.cli("image", "register", "img4", "--rootfs", str(rootfs), "--kernel-ref", "k4", check=True)
    home.stop_daemon()
    store = Store(open_db(home.layout.db))
    for vm_id, name, spec in (("a" * 12, "uses-k3", VMSpec(image="img4", kernel="k3")),
                              ("b" * 12, "uses-k4", VMSpec(image="img4"))):
        store.insert_vm(VM(id=vm_id, name=name, spec=spec, state="stopped", vm_dir=str(tmp_path / vm_id)))
    store.close()
    for kernel, vm in (("k3", "uses-k3"), ("k4", "uses-k4")):
        refused = home.cli("kernel", "rm", kernel)
        assert refused.returncode == 5, refused.stderr
        assert vm in refused.stderr
    assert sorted(k["name"] for k in _json(home, "kernel", "list")) == ["k3", "k4"]


def _wait_stage(home: Home, op: Operation, prefix: str) -> Operation:
    with home.client() as c:
        deadline = time.monotonic() + 30
        while not op.stage.startswith(prefix) and op.state == "running" and time.monotonic() < deadline:
            op = c.operation_wait(op.id, timeout=0.2)
    assert op.stage.startswith(prefix), op
    return op


def test_pull_cancel_leaves_nothing(home: Home, stalling_mirror: str) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(f'debian_mirror = "{stalling_mirror}"\n')
    home.cli("kernel", "list", check=True)  # starts the daemon with that mirror
    with home.client() as c:
        op = _wait_stage(home, c.kernel_pull("debian-6.1"), "resolving")
        done = c.operation_cancel(op.id)
    assert done.state == "cancelled" and done.error and "cancelled" in done.error.message
    assert _json(home, "kernel", "list") == []
    assert _leftovers(home) == []


def _cli(home: Home, *args: str) -> subprocess.Popen[str]:
    # SIGINT back to its default in the child: a test run started in the background of a non-interactive
    # shell inherits it ignored, and Python then keeps ignoring it (rightly: that is what the parent asked).
    return subprocess.Popen([sys.executable, "-m", "banger.cli", *args], env=home.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_on_the_cli_cancels_the_pull(home: Home, stalling_mirror: str) -> None:
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(f'debian_mirror = "{stalling_mirror}"\n')
    home.cli("kernel", "list", check=True)
    proc = _cli(home, "kernel", "pull", "debian-6.1")
    with home.client() as c:
        deadline = time.monotonic() + 30
        while not any(o.kind == "kernel.pull" and o.stage for o in c.operations()) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "cancel" in err
        assert [o.state for o in c.operations() if o.kind == "kernel.pull"] == ["cancelled"]
    assert _leftovers(home) == []


def test_ctrl_c_the_moment_the_operation_exists_cancels_it_under_load(home: Home, stalling_mirror: str) -> None:
    """SIGINT as soon as the daemon has the operation (the CLI may not even have its id yet), CPUs busy."""
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(f'debian_mirror = "{stalling_mirror}"\n')
    home.cli("kernel", "list", check=True)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        with home.client() as c:
            for attempt in range(4):
                seen = {o.id for o in c.operations()}
                proc = _cli(home, "kernel", "pull", "debian-6.1")
                deadline = time.monotonic() + 60
                while not [o for o in c.operations() if o.id not in seen] and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(0.01 * attempt)  # vary the moment: before, while and after the reply reaches the CLI
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=20)
                assert proc.returncode == 130, err
                new = [c.operation_wait(o.id, 10) for o in c.operations() if o.id not in seen]
                assert [o.state for o in new] == ["cancelled"], (attempt, err)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert _leftovers(home) == []


def test_pull_from_a_broken_mirror_fails_cleanly(home: Home, tmp_path: Path) -> None:
    import http.server

    handler = http.server.SimpleHTTPRequestHandler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
        home.layout.config_file.write_text(f'debian_mirror = "http://127.0.0.1:{server.server_port}/debian"\n')
        failed = home.cli("kernel", "pull", "debian-6.1")
    finally:
        server.shutdown()
        server.server_close()
    assert failed.returncode == 8, failed.stderr
    assert "HTTP 404" in failed.stderr
    assert _json(home, "kernel", "list") == []
    assert _leftovers(home) == []
