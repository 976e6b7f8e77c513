#!/usr/bin/env bash
# Set up a Debian 12 host for banger (as root): host packages, a virtual environment in .venv, the package.
#   scripts/setup.sh          runtime set-up
#   scripts/setup.sh --test   also the test tools (pytest, ruff, mypy)
#   scripts/setup.sh --firecracker   also Firecracker v1.12.1 from its official release (sha256-pinned), for
#                             hosts whose KVM can boot guests (Debian 12 has no package)
set -euo pipefail
cd "$(dirname "$0")/.."

# Every program banger runs comes from one of these (or from Debian's Essential set); the test suite
# checks it (tests/integration/test_host_programs.py and the run-wide record in tests/conftest.py).
PACKAGES=(
  python3 python3-venv git openssh-client ca-certificates iproute2 nftables kmod
  qemu-system-x86 qemu-utils e2fsprogs mmdebstrap debian-archive-keyring gpgv
  busybox-static util-linux uidmap tmux bind9-dnsutils systemd
)
TEST_PACKAGES=(skopeo docker-registry openssh-server cpio procps gcc libc6-dev)

want=("${PACKAGES[@]}")
[[ " $* " == *" --test "* ]] && want+=("${TEST_PACKAGES[@]}")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's and openssh-server's packages start services on :5000 and :22; tests run their own on
# loopback ports, so the system copies are switched off again.
for unit in docker-registry ssh; do
  if systemctl is-active --quiet "$unit" 2>/dev/null; then systemctl disable --now "$unit" >/dev/null 2>&1 || true; fi
done

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
if [[ " $* " == *" --test "* ]]; then
  .venv/bin/pip install -q -e '.[test]'
else
  .venv/bin/pip install -q -e .
fi
echo "setup: banger $(.venv/bin/banger --version | awk '{print $NF}') installed in $(pwd)/.venv" >&2
if [[ " $* " == *" --firecracker "* ]]; then
  .venv/bin/python -m banger.host.firecracker_release --dest /usr/local/bin/firecracker
fi
