#!/usr/bin/env bash
# Run banger's whole test suite on a Debian 12 host (as root): lint, types, unit, integration and system
# tests (system tests boot real VMs under QEMU TCG inside network namespaces the tests create).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export BANGER_TEST_CACHE=${BANGER_TEST_CACHE:-/var/tmp/banger-test-cache}
.venv/bin/ruff check src tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -p no:cacheprovider -ra --durations=15 "$@"
