"""Session fixtures shared by every test tier: expensive artifacts built once, cached by their inputs."""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import pytest

DEBIAN_MIRROR = "http://deb.debian.org/debian"
ROOT = Path(__file__).resolve().parents[1]
RUN_ID = ""
# The nested KVM tier (tests/nested: Firecracker and QEMU+KVM for real) is part of every run, the
# README's test command included; BANGER_NESTED=0 leaves it out of a quick local run. Its ten boots in a
# row (about 15 minutes) are scripts/test-nested.sh's, which sets BANGER_NESTED_BOOTS.
collect_ignore = ["nested"] if os.environ.get("BANGER_NESTED") == "0" else (
    [] if os.environ.get("BANGER_NESTED_BOOTS") else ["nested/test_nested_boots.py"])


def pytest_configure(config: pytest.Config) -> None:
    """Sweep what killed runs left, then give this run its id, directory and environment (testing.leaks)."""
    global RUN_ID
    from banger.testing import leaks

    RUN_ID = leaks.begin()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Fail the run if it left a process, home, namespace, mount or loop device, or ran a host program that
    scripts/setup.sh does not install; whatever was left is then removed."""
    from banger.host.run import OPTIONAL_TOOLS
    from banger.testing import leaks, tools

    yield
    found = leaks.leftovers(RUN_ID)
    programs = [p for p in leaks.tool_log(RUN_ID) if os.path.basename(p) not in OPTIONAL_TOOLS]
    leaks.remove(RUN_ID, exclude={os.getpid()})
    allowed = tools.with_dependencies(tools.setup_packages(ROOT / "scripts/setup.sh") | tools.essential_packages())
    # Not Debian's to provide: the venv's interpreter, the test cache's Firecracker, tests' own fake programs.
    ours = [Path(sys.prefix), Path(os.path.realpath(sys.executable)), cache_root(),
                Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"]
    missing = tools.check_programs(programs, allowed, ignore_under=ours)
    assert not found, f"the test run left things behind: {found.describe()}"
    assert not missing, "programs the run used that setup.sh does not install: " + "; ".join(
        f"{m.program}: {m.problem}" for m in missing)


def cache_root() -> Path:
    """``$BANGER_TEST_CACHE`` (default /var/tmp/banger-test-cache), created."""
    path = Path(os.environ.get("BANGER_TEST_CACHE", "/var/tmp/banger-test-cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock so concurrent test runs build a cached artifact once."""
    with open(cache_root() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def kernel_inputs_key(entry_json: str) -> str:
    """A digest of what the default kernel is made from: the catalog entry and banger's kernel code."""
    h = hashlib.sha256(entry_json.encode())
    package = resources.files("banger.kernels")
    for name in sorted(p.name for p in package.iterdir() if p.name.endswith(".py")):
        h.update(package.joinpath(name).read_bytes())
    h.update(package.joinpath("files/init").read_bytes())
    return h.hexdigest()[:16]


def build_default_kernel() -> Path:
    """Pull the catalog's default kernel into the test cache (once per set of inputs); its directory."""
    from banger.kernels import catalog, local

    entry = catalog.get_entry(catalog.DEFAULT_KERNEL)
    kernels_dir = cache_root() / "kernels" / kernel_inputs_key(entry.model_dump_json())
    target = kernels_dir / entry.name
    with cache_lock("kernel"):
        if not (target / "manifest.json").is_file():
            asyncio.run(local.pull(kernels_dir, entry, force=True, mirror=DEBIAN_MIRROR,
                                   cache_dir=cache_root() / "debs"))
    return target


@pytest.fixture(scope="session")
def banger_test_cache() -> Path:
    """The directory where session artifacts are cached across runs (``$BANGER_TEST_CACHE``)."""
    return cache_root()


@pytest.fixture(scope="session")
def default_kernel() -> Path:
    """Directory of the default kernel (vmlinux, initrd.img, modules.ext4, manifest.json), built once."""
    return build_default_kernel()


def build_golden_image() -> Path:
    """Build the golden image into the test cache (once per set of inputs); its directory.

    Lives in ``$BANGER_TEST_CACHE/golden-image/<inputs hash>``; build_golden's own cache of the
    mmdebstrap result is ``$BANGER_TEST_CACHE/golden-build``. Tests must treat the image as read-only.
    """
    import shutil

    from banger.images.golden import build_golden, inputs_hash
    from banger.progress import NullReporter

    base = cache_root() / "golden-image"
    dest = base / inputs_hash(DEBIAN_MIRROR)
    with cache_lock("golden"):
        if not (dest / "manifest.json").is_file():
            # Other recipes' images may belong to a run of other code on this machine: only old ones go.
            for stale in base.iterdir() if base.is_dir() else ():
                if time.time() - stale.stat().st_mtime > 3 * 86400:
                    shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)  # a build killed half way
            build = build_golden(dest, name="debian-bookworm", mirror=DEBIAN_MIRROR,
                                 cache_dir=cache_root() / "golden-build", reporter=NullReporter())
            asyncio.run(build)
    return dest


@pytest.fixture(scope="session")
def golden_image() -> Path:
    """Directory of the golden image (rootfs.ext4, work-seed.ext4, manifest.json), built once."""
    return build_golden_image()


def _banger_links() -> set[str]:
    """banger's bridges and TAPs in the root network namespace (tests must only make them in their own)."""
    from banger.host.run import run_sync

    out = run_sync(["ip", "-o", "link", "show"]).out
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
    return {n for n in names if n.startswith(("bgt-", "banger"))}


@pytest.fixture(scope="session", autouse=True)
def root_namespace_stays_clean() -> Iterator[None]:
    """Fail the run if any test left a banger bridge or TAP in the host's own network namespace."""
    before = _banger_links()
    yield
    leaked = _banger_links() - before
    assert not leaked, f"tests created links in the root network namespace: {sorted(leaked)}"
