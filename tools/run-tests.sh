#!/usr/bin/env bash
# The test suite (the README's second command): set up (idempotent), then
# the style checks, the sample-config check, the CI-definition lint (when
# tools/lint-ci.sh exists), the wheel-install test (the Sextant scenario
# through tempest from a wheel in a fresh tempest venv, both routes) and
# the OpenStack job (`tox -e openstack`: the same scenario through tempest
# on the lane's single-box cloud, Keystone credentials, both routes) and
# the pytest suite (unit + integration with real parts; the tests marked
# `openstack` run after the rest, on one cloud they share). Exits non-zero
# when any step fails. pytest runs last so its closing line is the last
# summary printed. KTP_SETUP_OPENSTACK=0 (as for setup.sh) leaves the
# OpenStack steps out.
#
# The editable main job (`tox -e direct-qemu`, the README's first command)
# is not run again here: the wheel-install test runs the same 8 scenario
# tests and 9 promise tests (tests/scenario/test_kerbside_promises.py),
# from the installed package the way users install it.
#
# Nothing is exported to PATH: every step names the venv's program by its
# path, and what they test finds its tools itself (common.tools).
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

step flake8 "$VENV/bin/flake8"
step check-uuid "$VENV/bin/check-uuid" --package kerbside_tempest_plugin.tests
step sample-config "$VENV/bin/python" tools/check_sample_config.py
if [ -x tools/lint-ci.sh ]; then
    step lint-ci ./tools/lint-ci.sh
fi
step wheel-install env BUILD_PYTHON="$VENV/bin/python" \
    bash tools/wheel-install-test.sh
OPENSTACK=${KTP_SETUP_OPENSTACK:-1}
if [ "$OPENSTACK" != 0 ]; then
    step openstack-job "$VENV/bin/tox" -e openstack
fi
# --durations: the slowest tests of every run, for the time budget
# (docs/plans/fast-feedback.md); printed before the closing summary.
step pytest "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    --durations=25 -m "not openstack" "$@"
# Apart, so that the cloud the `openstack` tests share (one bring-up,
# conftest.openstack_cloud) is not running under the rest of the suite.
if [ "$OPENSTACK" != 0 ]; then
    step pytest-openstack "$VENV/bin/python" -m pytest -q \
        -p no:cacheprovider --durations=10 -m openstack "$@"
fi

if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED steps: ${failed[*]}"
    exit 1
fi
echo "all steps passed"
