"""Wall time and peak memory of `kernel pull`, a fresh `image build`, and a bundle export + pull over HTTP.

Usage: python bench/images.py [--keep]     (root; needs the Debian mirror; takes a few minutes)

Everything runs in one throwaway BANGER_HOME with an empty cache, so nothing is reused: the kernel
package is downloaded, mmdebstrap runs, the bundle is compressed and downloaded from a loopback HTTP
server. Each phase runs in its own worker process that starts bangerd as its child, so the worker's
RUSAGE_CHILDREN peak is that phase's largest process (daemon, mmdebstrap, mkfs, zstd thread pool ...);
the daemon's own peak is its VmHWM, read just before it stops.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from banger.testing.daemon import Home

PHASES = ("kernel pull", "image build", "image export", "bundle pull")


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set of ``pid`` in KiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def start_daemon(home: Home) -> subprocess.Popen[bytes]:
    home.layout.ensure()
    proc = subprocess.Popen([sys.executable, "-m", "banger.daemon"], env=home.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (home.layout.socket.exists() and home.daemon_pid() == proc.pid):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("bangerd did not start")
        time.sleep(0.05)
    return proc


def serve(directory: Path) -> http.server.ThreadingHTTPServer:
    handler = http.server.SimpleHTTPRequestHandler

    class Quiet(handler):  # type: ignore[misc,valid-type]
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def phase_argv(phase: str, home: Home) -> list[str]:
    www = home.root / "www"
    if phase == "kernel pull":
        return ["kernel", "pull", "debian-6.1"]
    if phase == "image build":
        return ["image", "build"]
    if phase == "image export":
        www.mkdir(exist_ok=True)
        return ["image", "export", "debian-bookworm", "-o", str(www / "golden.tar.zst"), "--json"]
    sha = json.loads((home.root / "export.json").read_text())["sha256"]
    port = int((home.root / "port").read_text())
    return ["image", "pull", f"http://127.0.0.1:{port}/golden.tar.zst", "--name", "copy", "--sha256", sha]


def worker(phase: str, root: Path) -> None:
    """Run one phase against a daemon this process starts; print its figures as JSON."""
    home = Home(root)
    daemon = start_daemon(home)
    server = serve(root / "www") if phase == "bundle pull" else None
    if server:
        (root / "port").write_text(str(server.server_port))
    started = time.monotonic()
    done = home.cli(*phase_argv(phase, home), check=True, timeout=3600)
    wall = time.monotonic() - started
    if phase == "image export":
        (root / "export.json").write_text(done.stdout)
    hwm = vm_hwm_kib(daemon.pid)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
    if server:
        server.shutdown()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"phase": phase, "wall": wall, "daemon_hwm_kib": hwm, "tree_peak_kib": peak}))


def sizes(root: Path) -> dict[str, str]:
    bundle = root / "www" / "golden.tar.zst"
    rootfs = root / "state/images/debian-bookworm/rootfs.ext4"
    mib = 1 << 20
    apparent, allocated = rootfs.stat().st_size / mib, rootfs.stat().st_blocks * 512 / mib
    return {
        "rootfs apparent/allocated": f"{apparent:.0f} / {allocated:.0f} MiB",
        "bundle": f"{bundle.stat().st_size / mib:.0f} MiB",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the BANGER_HOME for inspection")
    parser.add_argument("--worker", nargs=2, metavar=("PHASE", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return
    root = Path(tempfile.mkdtemp(prefix="bh-bench-", dir="/tmp"))
    rows = []
    try:
        for phase in PHASES:
            out = subprocess.run([sys.executable, __file__, "--worker", phase, str(root)], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{'phase':<14} {'wall s':>8} {'bangerd peak RSS':>17} {'largest process':>16}")
        for r in rows:
            print(f"{r['phase']:<14} {r['wall']:>8.1f} {r['daemon_hwm_kib'] / 1024:>13.0f} MiB "
                  f"{r['tree_peak_kib'] / 1024:>12.0f} MiB")
        for key, value in sizes(root).items():
            print(f"{key}: {value}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("BANGER_HOME", None)
    main()
