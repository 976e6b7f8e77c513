"""Workspace prepare and export against a QEMU TCG guest, next to a plain `tar -c | ssh 'tar -x'`, and
`vm run REPO -- true` from a snapshot clone with the workspace built on the host as a disk.

Run as root; it makes its own network namespace, daemon and VM:

    python bench/workspace.py [--files 20000] [--mbytes 200] [--changed 1000] [--kernel-dir DIR] [--image-dir DIR]

The generated repository is half text (compressible, like source) and half random bytes (like assets),
in one commit. Reported: `vm workspace prepare` wall time and bytes sent (shallow mode: work tree + a pack
of HEAD's objects, in one tar), the baseline tar over the same SSH link into the same guest, their ratio,
and `vm workspace export` wall time after the guest changed ``--changed`` files. Then, with snapshots on:
`vm run REPO -- CMD` end to end on a clone (template built first, not counted), the guest's HEAD and
`git status` checked, its ratio to the baseline, and the export of ``--changed`` files through the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from banger.guest import ssh
from banger.testing.artifacts import VM_CONFIG, install_image, install_kernel
from banger.testing.daemon import Home
from banger.testing.netns import NetNS

CACHE = Path(os.environ.get("BANGER_TEST_CACHE", "/var/tmp/banger-test-cache"))
WORDS = "alpha beta gamma delta return value index buffer struct static const import def class".split()


def newest(pattern: str) -> Path:
    found = sorted(CACHE.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no {pattern} under {CACHE}: run the test suite once (it builds the kernel and image)")
    return found[-1]


def make_repo(root: Path, files: int, total: int) -> Path:
    """``files`` files of ``total`` bytes in all, in 100 directories, committed once."""
    rng = random.Random(7)
    repo = root / "big"
    repo.mkdir()
    each = total // files
    for i in range(files):
        path = repo / f"d{i % 100:02d}" / f"f{i:05d}.{'txt' if i % 2 else 'bin'}"
        path.parent.mkdir(exist_ok=True)
        if i % 2:
            path.write_text(" ".join(rng.choice(WORDS) for _ in range(each // 6))[:each])
        else:
            path.write_bytes(rng.randbytes(each))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "big"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, env=env)
    return repo


def baseline(home: Home, ns: NetNS, ip: str, repo: Path) -> tuple[float, int]:
    """`tar -c | ssh tar -x` of the same work tree (no .git) into the same guest: (seconds, bytes)."""
    argv = ssh.ssh_argv(ip, key_path=home.layout.ssh_dir / "id_ed25519", known_hosts=home.layout.known_hosts,
                        command=["mkdir -p /root/tarcopy && tar -x -C /root/tarcopy"], tty=False)
    t0 = time.perf_counter()
    tar = subprocess.Popen(["tar", "-c", "--exclude=./.git", "-C", str(repo), "."], stdout=subprocess.PIPE)
    remote = subprocess.Popen(ns.argv(argv), stdin=subprocess.PIPE)
    assert tar.stdout is not None and remote.stdin is not None
    sent = 0
    while chunk := tar.stdout.read(1 << 18):
        remote.stdin.write(chunk)
        sent += len(chunk)
    remote.stdin.close()
    if remote.wait() != 0 or tar.wait() != 0:
        sys.exit("baseline tar | ssh failed")
    return time.perf_counter() - t0, sent


def run(args: argparse.Namespace, ns: NetNS, tmp: Path) -> None:
    t0 = time.perf_counter()
    repo = make_repo(tmp, args.files, args.mbytes << 20)
    print(f"repository: {args.files} files, {args.mbytes} MiB, generated and committed in "
          f"{time.perf_counter() - t0:.1f}s")
    home = Home(netns=ns.name)
    home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
    home.layout.config_file.write_text(VM_CONFIG.replace("snapshots = false", "snapshots = true"))
    install_kernel(home.layout, Path(args.kernel_dir))
    install_image(home.layout, Path(args.image_dir))
    try:
        base_secs = 0.0
        change = (f"git ls-files | head -n {args.changed} | while read -r f; do echo changed >> \"$f\"; done")
        out = tmp / "export.patch"
        if not args.offline_only:
            base_secs = streaming(args, home, ns, repo, change, out)
        offline(args, home, repo, change, out, base_secs)
    finally:
        home.cli("vm", "kill", "wb", "wo", timeout=120)
        home.cleanup()


def streaming(args: argparse.Namespace, home: Home, ns: NetNS, repo: Path, change: str, out: Path) -> float:
    """Streaming prepare into a cold VM, the tar | ssh baseline and an export there; the baseline's seconds."""
    home.cli("vm", "create", "--name", "wb", "--memory", "1024", "--disk-size", "4G", "--cold", check=True)
    ip = json.loads(home.cli("vm", "show", "wb", "--json", check=True).stdout)["ip"]
    t0 = time.perf_counter()
    res = json.loads(home.cli("vm", "workspace", "prepare", "wb", str(repo), "--json", check=True).stdout)
    prep_wall = time.perf_counter() - t0
    base_secs, base_bytes = baseline(home, ns, ip, repo)
    print(f"prepare (shallow)      {prep_wall:7.1f}s wall ({res['seconds']:.1f}s in the daemon), "
          f"{res['bytes_sent'] / 2**20:7.1f} MiB sent")
    print(f"tar -c | ssh tar -x    {base_secs:7.1f}s wall, {base_bytes / 2**20:7.1f} MiB sent")
    print(f"ratio prepare/baseline {prep_wall / base_secs:7.2f}x time, {res['bytes_sent'] / base_bytes:.2f}x bytes")
    home.cli("vm", "exec", "wb", "--", change, check=True)
    t0 = time.perf_counter()
    home.cli("vm", "workspace", "export", "wb", "--output", str(out), check=True)
    print(f"export of {args.changed} changed files (streamed workspace): {time.perf_counter() - t0:.1f}s wall, "
          f"patch {out.stat().st_size / 2**20:.1f} MiB")
    home.cli("vm", "kill", "wb", timeout=120)
    return base_secs


def offline(args: argparse.Namespace, home: Home, repo: Path, change: str, out: Path, base_secs: float) -> None:
    """`vm run REPO -- true` on a clone (workspace built on the host), then an export of changed files."""
    home.cli("vm", "templates", "build", "--memory", "1024", "--disk-size", "4G", check=True, timeout=600)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    t0 = time.perf_counter()
    proc = home.cli("vm", "run", str(repo), "--name", "wo", "--memory", "1024", "--disk-size", "4G", "--",
                    "true", check=True)
    off_wall = time.perf_counter() - t0
    state = home.cli("vm", "exec", "wo", "--", "git rev-parse HEAD; git status --porcelain | wc -l",
                     check=True).stdout.split()
    print(f"vm run REPO -- true (clone + offline workspace) {off_wall:7.1f}s wall; guest HEAD "
          f"{'= host' if state[0] == head else '!= host ' + state[0]}, `git status` lines {state[1]}")
    print(f"  {[line for line in proc.stderr.splitlines() if 'workspace' in line]}")
    if base_secs:
        print(f"ratio offline vm run / tar | ssh   {off_wall / base_secs:7.2f}x")
    home.cli("vm", "exec", "wo", "--", change, check=True)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        home.cli("vm", "workspace", "export", "wo", "--output", str(out), check=True)
        times.append(time.perf_counter() - t0)
    print(f"export of {args.changed} changed files (offline workspace, agent + host patch): median "
          f"{sorted(times)[1]:.2f}s of 3 ({', '.join(f'{t:.2f}s' for t in times)} in order), "
          f"patch {out.stat().st_size / 2**20:.1f} MiB")
    for line in home.layout.daemon_log.read_text().splitlines():
        if "export made on the host" in line:
            rec = json.loads(line)
            print(f"  guest (list + tar) {rec['guest_seconds']:.2f}s, host (patch) {rec['host_seconds']:.2f}s, "
                  f"{rec['sent_bytes'] / 2**20:.1f} MiB sent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--mbytes", type=int, default=200)
    parser.add_argument("--changed", type=int, default=1000)
    parser.add_argument("--offline-only", action="store_true", help="skip the streaming prepare and its VM")
    parser.add_argument("--kernel-dir", default=None)
    parser.add_argument("--image-dir", default=None)
    args = parser.parse_args()
    args.kernel_dir = args.kernel_dir or str(newest("kernels/*/debian-6.1"))
    args.image_dir = args.image_dir or str(newest("golden-image/*"))
    with NetNS() as ns, tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        run(args, ns, Path(tmp))


if __name__ == "__main__":
    main()
