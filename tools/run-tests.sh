#!/usr/bin/env bash
# The test suite: set up (idempotent), then style checks, the sample-config
# check, the main job (the Sextant scenario on the direct-qemu lane through
# tempest) and the pytest suite (unit + integration with real parts).
# Exits non-zero when any step fails. pytest runs last so its closing line
# is the last summary printed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}

./tools/setup.sh || { echo "setup failed"; exit 1; }

failed=()
step() {
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - t0)) s)"
    else
        echo "=== $name: FAILED ($((SECONDS - t0)) s)"
        failed+=("$name")
    fi
}

export PATH="$VENV/bin:$PATH"
step flake8 flake8
step check-uuid check-uuid --package kerbside_tempest_plugin.tests
step sample-config python tools/check_sample_config.py
if [ -x tools/direct-qemu-job.sh ]; then
    step direct-qemu bash tools/direct-qemu-job.sh
fi
step pytest python -m pytest -q -p no:cacheprovider "$@"

if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED steps: ${failed[*]}"
    exit 1
fi
echo "all steps passed"
