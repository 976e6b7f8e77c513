"""The nested KVM tier: a QEMU TCG VM that is itself a KVM host, with banger installed inside it.

Under ``-cpu max`` TCG gives the guest an AMD CPU with SVM and nested paging, so ``kvm_amd`` loads and
``/dev/kvm`` appears; Firecracker (and QEMU with ``-accel kvm``) then run real KVM guests in there. The KVM
host is an ordinary banger VM of the outer daemon (QEMU TCG, in a namespace the test makes), booted from a
variant of the golden recipe with qemu-system-x86 and a few tools added. What the inner banger needs comes
in on the KVM host's work disk (its image's work seed): the kernel, the golden image and Firecracker, as
built for the rest of the suite, never rebuilt inside. banger itself comes in as wheels built from this
checkout (the KVM host has no package mirror) and is installed into a venv there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from banger.testing.daemon import Home

# What the KVM host adds to the golden recipe: a VMM for the QEMU+KVM runs, and what banger runs as root.
KVM_HOST_PACKAGES = ("qemu-system-x86", "qemu-utils", "nftables", "dmsetup", "python3-venv", "e2fsprogs")
# Measured: with kvm_amd's defaults the KVM host VM resets during a nested boot (Unhandled WRMSR
# 0xc0010007, the SVM virtual-GIF path); these turn off what TCG's SVM emulation does not do well. They go
# on the KVM host's kernel command line: udev loads kvm_amd at boot, before anything could modprobe it.
KVM_AMD_OPTIONS = {"nested": "1", "npt": "1", "vgif": "0", "vls": "0", "lbrv": "0", "avic": "0"}
# One vCPU: with two, a reschedule IPI from the other vCPU was taken right after VMRUN returned, before
# KVM had restored the host's state (QEMU 7.2's SVM emulation let it through with the GIF clear), and the
# KVM host panicked in irqentry_enter (kernel stack shown in the README's nested-tier notes).
KVM_HOST_VCPU = 1
# One vCPU for the nested guests (BANGER_NESTED_VCPU overrides it). With two, both nested vCPUs ran on the
# KVM host's one (emulated) vCPU, and about one boot in four hung: an RCU stall with a timer lost on one
# vCPU, i.e. cross-vCPU IPIs and timers that QEMU 7.2's SVM emulation delivers late or not at all. With
# one there is no such traffic: ten boots in a row passed (2026-12-02, median 90 s, 63-133 s, on a busy
# machine).
NESTED_VCPU = int(os.environ.get("BANGER_NESTED_VCPU", "1"))
KVM_HOST_MEMORY_MIB = 4096
KVM_HOST_DISK = "16G"
INNER_HOME = "/root/inner"
INNER_BANGER = "/opt/banger/bin/banger"
# Clocks (see the README's nested-tier notes): TCG's AMD CPU has no invariant-TSC bit, so the KVM host's
# kernel marks its TSC unstable ("TSCs unsynchronized"), runs on jiffies, and KVM gives its SMP guests an
# unstable kvm-clock. Under TCG every vCPU reads one global counter, so the TSC is in fact synchronized:
# tsc=reliable says so. The nested guests keep a periodic tick (nohz=off): QEMU 7.2's SVM emulation can
# drop the one-instruction interrupt shadow of `sti; hlt` across a VM exit, and a tickless vCPU that
# halts with an interrupt already delivered then sleeps until a timer that may never come.
KVM_HOST_KERNEL_ARGS = " ".join(["tsc=reliable", *(f"kvm_amd.{k}={v}" for k, v in KVM_AMD_OPTIONS.items())])
# A nested boot takes a minute or more of wall time, and udev has more than once not announced a disk in
# time. The default device timeout goes to five minutes here; /dev/vdb (/root) has its own in the golden
# fstab, which wins over this one and is five minutes too (it was 30 s: "Timed out waiting for device
# /dev/vdb" about 45 s into a one-vCPU nested boot, so no /root, no authorized key, no SSH).
NESTED_KERNEL_ARGS = "nohz=off systemd.default_device_timeout_sec=300"
OUTER_CONFIG = f"""\
runtime = "qemu"
firecracker_bin = "/nonexistent/firecracker"
tap_pool_size = 0
ssh_ready_timeout = "300s"
[vm_defaults]
kernel_args = "{KVM_HOST_KERNEL_ARGS}"
"""
# The inner bridge must not take the outer one's network: the KVM host's own eth0 lives on 172.30.0.0/24.
INNER_CONFIG = """\
runtime = "auto"
bridge_ip = "172.31.0.1"
cidr = "172.31.0.0/24"
firecracker_bin = "/root/nested/firecracker"
jailer_bin = "/root/nested/jailer"
kvm_probe_timeout = "120s"
ssh_ready_timeout = "300s"
tap_pool_size = 1
[vm_defaults]
vcpu = {vcpu}
memory_mib = 1024
disk_size = "2G"
kernel_args = "{kernel_args}"
"""


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def build_kvm_host_rootfs(cache: Path, mirror: str) -> Path:
    """The KVM host's image (golden + KVM_HOST_PACKAGES), built once per recipe into ``cache``."""
    from banger.images.golden import build_golden, inputs_hash
    from banger.progress import NullReporter

    dest = cache / "kvm-host-image" / inputs_hash(mirror, KVM_HOST_PACKAGES)
    if not (dest / "manifest.json").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        asyncio.run(build_golden(dest, name="kvm-host", mirror=mirror, cache_dir=cache / "golden-build-kvmhost",
                                 reporter=NullReporter(), extra_packages=KVM_HOST_PACKAGES))
    return dest


def build_nested_image(cache: Path, kvm_host: Path, kernel: Path, golden: Path, firecracker: Path) -> Path:
    """An image dir for the KVM host: its rootfs, and a work seed holding what the inner banger boots
    (Firecracker's ``jailer`` beside it, so the inner default ``jailer = auto`` jails every Firecracker)."""
    from banger.images.seed import make_seed_image

    jailer = firecracker.parent / "jailer"
    key = _digest(*(json.loads((d / "manifest.json").read_text()).get("rootfs_sha256", d) for d in (kvm_host, golden)),
                  (kernel / "manifest.json").read_text(), firecracker.stat().st_size, firecracker.stat().st_mtime,
                  jailer.stat().st_size)
    dest = cache / "nested-image" / key
    if (dest / "manifest.json").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=cache))
    try:
        tree = stage / "tree" / "nested"
        for src, sub in ((kernel, "kernel"), (golden, "golden")):
            (tree / sub).mkdir(parents=True)
            for f in src.iterdir():
                _link_or_copy(f, tree / sub / f.name)
        _link_or_copy(firecracker, tree / "firecracker")
        _link_or_copy(jailer, tree / "jailer")
        asyncio.run(make_seed_image(stage / "tree", stage / "work-seed.ext4"))
        (stage / "rootfs.ext4").symlink_to((kvm_host / "rootfs.ext4").resolve())
        manifest = json.loads((kvm_host / "manifest.json").read_text())
        manifest.update(name="kvm-host", work_seed_size=(stage / "work-seed.ext4").stat().st_size)
        (stage / "manifest.json").write_text(json.dumps(manifest))
        shutil.rmtree(stage / "tree")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src.resolve(), dest)
    except OSError:
        shutil.copy2(src.resolve(), dest)


def build_wheels(checkout: Path, out: Path) -> Path:
    """banger's wheel and its dependencies' (for the KVM host's Python), into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(checkout)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"pip wheel failed:\n{proc.stderr}")
    return out


@dataclass
class Timed:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class KvmHost:
    """The KVM host VM ``name`` in ``home`` (the outer daemon), and the inner banger's CLI."""

    def __init__(self, home: Home, name: str = "kvmhost"):
        self.home = home
        self.name = name

    @classmethod
    def in_netns(cls, netns: str, kernel: Path, image: Path) -> KvmHost:
        """A KVM host (not yet booted) of a fresh outer home whose daemon runs in ``netns``."""
        from banger.testing.artifacts import install_image, install_kernel

        home = Home(netns=netns)
        home.layout.config_file.parent.mkdir(parents=True, exist_ok=True)
        home.layout.config_file.write_text(OUTER_CONFIG)
        install_kernel(home.layout, kernel)
        install_image(home.layout, image, name="kvm-host")
        return cls(home)

    def boot(self, image: str = "kvm-host") -> None:
        args = ["vm", "create", "--name", self.name, "--image", image, "--vcpu", str(KVM_HOST_VCPU),
                "--memory", str(KVM_HOST_MEMORY_MIB), "--disk-size", KVM_HOST_DISK]
        proc = self.home.cli(*args, timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"the KVM host did not come up: {proc.stderr}\n{self.console()}")

    def sh(self, script: str, *, timeout: float = 900, check: bool = True, stdin: Path | None = None) -> Timed:
        """Run ``script`` as root in the KVM host."""
        argv = self.home._wrap([sys.executable, "-m", "banger.cli", "vm", "ssh", self.name, "--", script])
        started = time.monotonic()
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as fin:
            proc = subprocess.run(argv, env=self.home.env, stdin=fin, capture_output=True, timeout=timeout)
        out = Timed(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                    time.monotonic() - started)
        if check and out.returncode != 0:
            raise AssertionError(f"in the KVM host, `{script}` exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def setup(self, wheels: Path, *, inner_vcpu: int = NESTED_VCPU, inner_kernel_args: str = NESTED_KERNEL_ARGS
              ) -> None:
        """kvm_amd, banger from the wheels, and an inner home with the kernel and golden image installed."""
        with tempfile.TemporaryDirectory() as tmp:
            tarball = Path(tmp) / "wheels.tar"
            with tarfile.open(tarball, "w") as tar:
                tar.add(wheels, arcname="wheels")
            self.sh("rm -rf /root/wheels && tar -x -C /root", stdin=tarball)
        config = INNER_CONFIG.format(vcpu=inner_vcpu, kernel_args=inner_kernel_args)
        install = (
            "from pathlib import Path; from banger.paths import layout_from_env; "
            "from banger.testing.artifacts import install_kernel, install_image; "
            "layout = layout_from_env(); "
            "install_kernel(layout, Path('/root/nested/kernel')); install_image(layout, Path('/root/nested/golden'))"
        )
        self.sh(" && ".join([
            "modprobe kvm_amd",
            "test -c /dev/kvm",
            *(f"grep -qx {v} /sys/module/kvm_amd/parameters/{k}" for k, v in KVM_AMD_OPTIONS.items()
              if k in ("vgif", "nested")),  # the command line really reached the module
            "modprobe -a loop dm_snapshot tun",  # dm-snapshot root disks for Firecracker, loops, TAPs
            "python3 -m venv /opt/banger",
            "/opt/banger/bin/pip install -q --no-index --find-links /root/wheels banger",
            f"mkdir -p {INNER_HOME}",
            f"printf %s {shlex.quote(config)} > {INNER_HOME}/config.toml",
            f"BANGER_HOME={INNER_HOME} /opt/banger/bin/python -c {shlex.quote(install)}",
        ]), timeout=1200)

    def banger(self, *args: str, timeout: float = 900, cwd: str | None = None) -> Timed:
        """The inner CLI, ``banger ARGS``, as root in the KVM host."""
        cd = f"cd {shlex.quote(cwd)} && " if cwd else ""
        return self.sh(f"{cd}BANGER_HOME={INNER_HOME} {INNER_BANGER} {shlex.join(args)}", timeout=timeout,
                       check=False)

    def console(self, lines: int = 80) -> str:
        """The KVM host's console tail; when it rebooted, also what it printed before the last boot."""
        out = []
        for path in sorted(self.home.layout.vms_dir.glob("*/console.log")):
            text = path.read_text(errors="replace").splitlines(keepends=True)
            boots = [i for i, line in enumerate(text) if "Linux version" in line]
            if len(boots) > 1:
                out.append(f"(the KVM host booted {len(boots)} times; before the last boot:)\n")
                out.append("".join(text[max(0, boots[-1] - lines):boots[-1]]))
                out.append("(the last boot:)\n")
            out.append("".join(text[-lines:]))
        return "".join(out)

    def diagnostics(self) -> str:
        """The KVM host's console and the inner daemon's log and VM consoles, for a failing test."""
        parts = [f"===== KVM host console =====\n{self.console()}"]
        try:
            inner = self.sh(f"tail -n 60 {INNER_HOME}/state/bangerd.log; for c in {INNER_HOME}/state/vms/*/console.log;"
                            " do echo \"===== $c\"; tail -n 60 \"$c\"; done; dmesg | tail -n 40", timeout=120,
                            check=False)
            parts.append(f"===== inner daemon log, inner consoles, KVM host dmesg =====\n{inner.stdout}")
        except Exception as exc:  # the KVM host may be the thing that broke
            parts.append(f"(could not reach the KVM host: {exc})")
        return "\n".join(parts)


def inner_ok(host: KvmHost, *args: str, timeout: float = 900) -> str:
    """(For tests.) ``banger ARGS`` in the KVM host, which must exit 0; its output."""
    out = host.banger(*args, timeout=timeout)
    print(f"  inner banger {' '.join(args)}: exit {out.returncode} in {out.seconds:.1f}s")
    assert out.returncode == 0, f"inner banger {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def assert_nothing_left(host: KvmHost) -> None:
    """(For tests.) After the inner daemon stops: no VMM, TAP, loop or dm device, VM directory of banger's."""
    inner_ok(host, "daemon", "stop")
    left = host.sh("pgrep -a -x firecracker; pgrep -a -x qemu-system-x86; ip -o link | grep -o 'bgt-[0-9a-f]*';"
                   f" losetup -a | grep {INNER_HOME}; dmsetup ls 2>/dev/null | grep banger-;"
                   f" ls {INNER_HOME}/state/vms; ls {INNER_HOME}/state-jail/firecracker 2>/dev/null", check=False)
    assert left.stdout.strip() == "", f"left in the KVM host:\n{left.stdout}"


# Plain Firecracker, for the baseline: the disks of a VM the inner banger created but did not start, the
# same kernel command line and config disk banger would give it, a TAP on banger's bridge, and
# `firecracker --no-api --config-file`: the time from exec to the first `ssh true` that succeeds.
PLAIN_FIRECRACKER = r'''
import asyncio, json, os, subprocess, sys, time
from pathlib import Path
from banger import bootargs, config
from banger.daemon.vm_handles import WORK_DISK, read_root_disk
from banger.guest import provision, ssh
from banger.store.db import open_db
from banger.store.repo import Store

home = Path("/root/inner"); state = home / "state"
cfg = config.load(home / "config.toml")
store = Store(open_db(state / "state.db"))
vm = store.get_vm(sys.argv[1]); kernel = Path(store.find_kernel(cfg.default_kernel).dir)
vm_dir = Path(vm.vm_dir); key = state / "ssh/id_ed25519"
files, _ = provision.plan_files([], Path("/nonexistent"), public_key_line=ssh.public_key_line(key), git_identity=None)
host_key = ssh.read_host_key(vm_dir / "ssh_host_ed25519_key")
if host_key is None:  # made and pinned at first start, as banger does
    host_key = ssh.make_host_key(vm_dir / "ssh_host_ed25519_key")
    ssh.pin_host_key(state / "ssh/known_hosts", [vm.ip, f"{vm.name}.vm"], host_key[1].decode())
asyncio.run(provision.build_config_disk(vm_dir / provision.CONFIG_DISK, files, host_key))
disks = [read_root_disk(vm_dir).path, vm_dir / WORK_DISK, kernel / "modules.ext4", vm_dir / provision.CONFIG_DISK]
cmdline = bootargs.kernel_cmdline(name=vm.name, ip=vm.ip, gateway=cfg.bridge_ip, cidr=cfg.cidr, dns=cfg.default_dns,
                                  modules_disk=True, config_disk="/dev/vdd", runtime="firecracker",
                                  extra=cfg.vm_defaults.kernel_args)
tap = "bgplain0"
subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
subprocess.run(["ip", "link", "set", tap, "master", cfg.bridge_name, "up"], check=True)
doc = {"boot-source": {"kernel_image_path": str(kernel / "vmlinux"), "initrd_path": str(kernel / "initrd.img"),
                       "boot_args": cmdline},
       "machine-config": {"vcpu_count": vm.spec.vcpu, "mem_size_mib": vm.spec.memory_mib},
       "drives": [{"drive_id": f"vd{chr(97 + i)}", "path_on_host": str(p), "is_root_device": False,
                   "is_read_only": i >= 2} for i, p in enumerate(disks)],
       "network-interfaces": [{"iface_id": "eth0", "host_dev_name": tap, "guest_mac": vm.mac}]}
(vm_dir / "plain.json").write_text(json.dumps(doc))
probe = ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={state / 'ssh/known_hosts'}", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=2", "-o", "StrictHostKeyChecking=yes", f"root@{vm.ip}", "true"]
with open(vm_dir / "plain-console.log", "wb") as console:
    started = time.monotonic()
    fc = subprocess.Popen([cfg.firecracker_bin, "--no-api", "--config-file", str(vm_dir / "plain.json")],
                          stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if fc.poll() is not None or time.monotonic() - started > 300:
                sys.exit(f"plain Firecracker did not answer ssh: exit {fc.poll()}")
            time.sleep(0.2)
        print(f"{time.monotonic() - started:.2f}")
    finally:
        fc.kill(); fc.wait()
        subprocess.run(["ip", "link", "del", tap])
'''


def plain_firecracker_seconds(host: KvmHost, vm: str = "plain") -> float:
    """Boot-to-``ssh true`` of plain Firecracker over the disks of a fresh (never started) banger VM."""
    made = host.banger("vm", "create", "--no-start", "--name", vm)
    assert made.returncode == 0, made.stderr
    try:
        out = host.sh(f"/opt/banger/bin/python -c {shlex.quote(PLAIN_FIRECRACKER)} {vm}", timeout=600)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        host.banger("vm", "delete", vm)


def timed_inside(host: KvmHost, *args: str) -> tuple[int, float, str]:
    """``banger ARGS`` in the KVM host, timed there (no outer ssh in the figure): (exit status, seconds, and
    the command's ``snapshot:`` notes, which say when a clone fell back to a cold boot)."""
    script = (f"s=$(date +%s.%N); BANGER_HOME={INNER_HOME} {INNER_BANGER} {shlex.join(args)} >/dev/null 2>/tmp/err; "
              "rc=$?; e=$(date +%s.%N); grep -h 'snapshot:' /tmp/err; echo \"$rc $s $e\"")
    lines = host.sh(script, check=False).stdout.strip().splitlines()
    rc, start, end = lines[-1].split()
    return int(rc), float(end) - float(start), "\n".join(lines[:-1])
