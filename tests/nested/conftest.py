"""The nested KVM tier's fixtures: the KVM host VM (booted once per module, inside a namespace made here)
with banger installed in it from this checkout's wheels. On failure its console and the inner daemon's
log are printed."""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.testing.firecracker import firecracker_binary, jailer_binary
from banger.testing.nested import KvmHost, build_kvm_host_rootfs, build_nested_image, build_wheels
from banger.testing.netns import NetNS

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_MIRROR = "http://deb.debian.org/debian"  # as tests/conftest.py's session artifacts


@pytest.fixture(scope="session")
def nested_image(banger_test_cache: Path, default_kernel: Path, golden_image: Path) -> Path:
    with open(banger_test_cache / ".kvm-host.lock", "w") as lock:  # one build when runs overlap
        fcntl.flock(lock, fcntl.LOCK_EX)
        kvm_host = build_kvm_host_rootfs(banger_test_cache, DEBIAN_MIRROR)
        firecracker = firecracker_binary(banger_test_cache)
        jailer_binary(banger_test_cache)  # beside it: the inner banger jails Firecracker
        return build_nested_image(banger_test_cache, kvm_host, default_kernel, golden_image, firecracker)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheels(ROOT, tmp_path_factory.mktemp("wheels"))


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        item.session.stash[FAILED] = True
    return report


@pytest.fixture(scope="module")
def kvm_host(request: pytest.FixtureRequest, nested_image: Path, default_kernel: Path, wheels: Path
             ) -> Iterator[KvmHost]:
    with NetNS() as ns:
        host = KvmHost.in_netns(ns.name, default_kernel, nested_image)
        home = host.home
        try:
            host.boot()
            host.setup(wheels)
            yield host
        except BaseException:
            request.session.stash[FAILED] = True
            raise
        finally:
            if request.session.stash.get(FAILED, False):
                sys.stderr.write(host.diagnostics())
            home.cli("vm", "kill", host.name, timeout=120)
            home.cleanup()
