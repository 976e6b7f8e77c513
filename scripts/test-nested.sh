#!/usr/bin/env bash
# Run only the nested KVM tier (as root on a Debian 12 host): a QEMU TCG VM that is a KVM host, with
# banger inside it running Firecracker and QEMU+KVM guests for real (tests/nested, banger.testing.nested).
# scripts/test.sh (the README's test command) runs it too, all but the boots in a row
# (tests/nested/test_nested_boots.py), which this script adds: ten unless BANGER_NESTED_BOOTS says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export BANGER_TEST_CACHE=${BANGER_TEST_CACHE:-/var/tmp/banger-test-cache}
export BANGER_NESTED_BOOTS=${BANGER_NESTED_BOOTS:-10}
exec .venv/bin/python -m pytest -p no:cacheprovider -ra --durations=15 tests/nested "$@"
