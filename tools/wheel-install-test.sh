#!/usr/bin/env bash
# The plugin installed the way tempest plugins are installed: from a wheel,
# into a fresh venv of tempest's own, with no checkout in sight.
#
#   1. build the sdist, then the wheel from the sdist (python -m build, in
#      its isolated build env, as pip builds for a user), and check that
#      the wheel carries the guest sources;
#   2. a fresh venv holding only the wheel and what it requires (tempest,
#      ryll, ...; no extras), the plugin imported from site-packages;
#   3. per route (KTP_ROUTE=kerbside|direct; default both): `tempest init`
#      a workspace outside the checkout, write the tempest.conf a user
#      writes by hand from etc/tempest.conf.sample (no [sextant] image:
#      the bundled guest is built from the installed package data into a
#      fresh image cache), `tempest run --regex sextant`;
#   4. count the passes in the subunit stream of each run: 4 a route and
#      the 9 promise tests on the kerbside route, nothing failed; the
#      classes that skip by design (the promise tests on the direct route,
#      the cloud's promise test on this lane) may skip, but a skip is
#      never a pass, so an unexpected one still misses the count.
#
# Uses the checkout's .venv only to build (BUILD_PYTHON); the venv under
# test is made from PYTHON (default python3). Artifacts (dist/, logs,
# workspaces with their tests' artifacts) go to KTP_WHEEL_ARTIFACTS
# (default wheel-install-<UTC time> under KTP_ARTIFACTS, else under
# artifacts/); the fresh venv is removed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_PY=${BUILD_PYTHON:-$ROOT/.venv/bin/python}
PY=${PYTHON:-python3}
ROUTES=${KTP_ROUTE:-kerbside direct}
TESTS_PER_ROUTE=4
# tests/scenario/test_kerbside_promises.py: on the kerbside route only
# (skipped on the direct route, and a skip is not a pass).
PROMISE_TESTS=9
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
# Its own directory, also under a KTP_ARTIFACTS that the main job shares.
OUT=${KTP_WHEEL_ARTIFACTS:-${KTP_ARTIFACTS:-$ROOT/artifacts}/wheel-install-$STAMP}
T0=$SECONDS

log() { printf '[wheel-install %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; log "FAILED after $((SECONDS - T0)) s"; exit 1; }
phase() { log "$1: $((SECONDS - PHASE_T0)) s"; PHASE_T0=$SECONDS; }

# shellcheck source=tools/job-lib.sh
. "$ROOT/tools/job-lib.sh"
# shellcheck disable=SC2086
ktp_check_routes $ROUTES
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/ktp-wheel-XXXXXX)
V=$WORK/venv
cleanup() {
    # The teardown safety net: lanes a dead runner left up.
    local lane
    for lane in "$OUT"/*/artifacts/lanes/*/; do
        [ -f "$lane/processes.json" ] || continue
        [ -x "$V/bin/kerbside-harness" ] || break
        "$V/bin/kerbside-harness" down --workdir "$lane" \
            >"$lane/job-down.log" 2>&1 \
            || log "teardown safety net failed for $lane"
        rm -rf "$lane/secrets"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
log "artifacts: $OUT"
PHASE_T0=$SECONDS

# -- 1. sdist, and the wheel built from it ------------------------------
"$BUILD_PY" -m build --outdir "$OUT/dist" "$ROOT" \
    >"$OUT/build.log" 2>&1 \
    || { tail -20 "$OUT/build.log"; die "python -m build failed"; }
WHEEL=$(ls "$OUT"/dist/*.whl 2>/dev/null | head -1)
SDIST=$(ls "$OUT"/dist/*.tar.gz 2>/dev/null | head -1)
[ -f "$WHEEL" ] && [ -f "$SDIST" ] || die "no wheel or sdist in $OUT/dist"
log "built $(basename "$SDIST") and $(basename "$WHEEL")"
unzip -l "$WHEEL" >"$OUT/wheel-contents.txt" || die "unzip -l failed"
for f in guests/build.sh guests/sextant/main.c guests/sextant/psf2h.py \
        guests/latency/build.sh guests/latency/latency.c \
        guest_images.py common/tools.py; do
    grep -q " kerbside_tempest_plugin/$f\$" "$OUT/wheel-contents.txt" \
        || die "the wheel lacks kerbside_tempest_plugin/$f"
done
! grep -q ' unit_tests/' "$OUT/wheel-contents.txt" \
    || die "the wheel ships unit_tests/"
phase "build and wheel check"

# -- 2. a fresh venv: the wheel and its requirements only ---------------
"$PY" -m venv "$V" || die "$PY -m venv failed"
"$V/bin/pip" install -q "$WHEEL" >"$OUT/pip.log" 2>&1 \
    || { tail -20 "$OUT/pip.log"; die "pip install of the wheel failed"; }
"$V/bin/pip" freeze >"$OUT/pip-freeze.txt"
for extra in shakenfist-client matplotlib; do
    ! grep -qi "^$extra==" "$OUT/pip-freeze.txt" \
        || die "$extra got installed without its extra"
done
where=$(cd "$WORK" && "$V/bin/python" -I -c \
    'import kerbside_tempest_plugin as k; print(k.__file__)')
case $where in "$V"/lib/*/site-packages/*) ;; *)
    die "the plugin imports from $where, not from the venv's site-packages";;
esac
log "plugin: $where"
phase "fresh venv"

if [[ " $ROUTES " == *" kerbside "* ]]; then
    "$V/bin/kerbside-harness" setup >"$OUT/kerbside-setup.log" 2>&1 \
        || { cat "$OUT/kerbside-setup.log"; die "kerbside-harness setup"; }
    phase "kerbside-harness setup"
fi

# -- 3. tempest, as a user runs it --------------------------------------
# Every [kerbside] / [service_available] key written must be documented in
# the sample (as "#key = ...").
sample_has() {  # group key
    awk -v g="[$1]" -v k="#$2 = " '
        /^\[/ {in_g = ($0 == g)} in_g && index($0, k) == 1 {found = 1}
        END {exit !found}' "$ROOT/etc/tempest.conf.sample"
}
for gk in service_available:kerbside kerbside:provider kerbside:route \
        kerbside:artifact_dir; do
    sample_has "${gk%%:*}" "${gk#*:}" \
        || die "etc/tempest.conf.sample does not document [${gk%%:*}] ${gk#*:}"
done

count_passes() {  # workspace route
    (cd "$1" && "$V/bin/stestr" last --subunit) >"$OUT/$2.subunit" \
        || { log "stestr last failed in $1"; echo 0; return; }
    "$V/bin/python" - "$OUT/$2.subunit" "$OUT/$2-results.txt" <<'EOF'
import sys

import subunit
import testtools

results = {}
result = testtools.StreamToDict(
    lambda t: results.__setitem__(t['id'], t['status']))
with open(sys.argv[1], 'rb') as f:
    result.startTestRun()
    subunit.ByteStreamToStreamResult(
        f, non_subunit_name='stdout').run(result)
    result.stopTestRun()
with open(sys.argv[2], 'w') as out:
    for test_id, status in sorted(results.items()):
        out.write('%s %s\n' % (status, test_id))
# A class that skips by design (the cloud's promise tests on this
# lane) is not a failure; the pass count must still reach its number.
bad = [i for i, s in results.items() if s not in ('success', 'skip')]
passed = [i for i, s in results.items() if s == 'success']
print(len(passed) if not bad else -len(bad))
EOF
}

total=0
expect=0
status=0
for route in $ROUTES; do
    ws=$OUT/$route
    "$V/bin/tempest" init --workspace-path "$OUT/workspace.yaml" \
        --name "ktp-wheel-$STAMP-$route" "$ws" \
        >"$OUT/tempest-init-$route.log" 2>&1 \
        || { cat "$OUT/tempest-init-$route.log"; die "tempest init failed"; }
    mkdir -p "$ws/lock" "$ws/artifacts"
    cat >"$ws/etc/tempest.conf" <<EOF
[DEFAULT]
log_file = $ws/tempest.log
use_stderr = false

[oslo_concurrency]
lock_path = $ws/lock

[service_available]
kerbside = True

[kerbside]
provider = direct_qemu
route = $route
artifact_dir = $ws/artifacts
EOF
    log "route $route: tempest run --regex sextant in $ws"
    t0=$SECONDS
    (cd "$ws" && env -u SEXTANT_IMAGE KTP_IMAGES_CACHE="$WORK/images" \
        "$V/bin/tempest" run --serial --regex sextant)
    rc=$?
    n=$(count_passes "$ws" "$route")
    want=$TESTS_PER_ROUTE
    [ "$route" = kerbside ] && want=$((want + PROMISE_TESTS))
    log "route $route: tempest exited $rc after $((SECONDS - t0)) s;" \
        "passes $n of $want"
    if [ "$rc" != 0 ] || [ "$n" != "$want" ]; then
        status=1
        [ "${n:-0}" -lt 0 ] && log "route $route: ${n#-} test(s) not" \
            "passed (see $OUT/$route-results.txt)"
    else
        total=$((total + n))
    fi
    expect=$((expect + want))
done
phase "tempest runs"

log "passes: $total of $expect (subunit streams in $OUT)"
log "total: $((SECONDS - T0)) s"
if [ "$status" = 0 ] && [ "$total" = "$expect" ]; then
    log "PASSED"
    exit 0
fi
log "FAILED"
exit 1
