#!/usr/bin/env bash
# The OpenStack job (`tox -e openstack`): the Sextant scenario tests
# through tempest on the OpenStack lane's single-box cloud (Keystone,
# Placement, Glance, Neutron, Nova + libvirt, Kerbside in front with an
# `openstack` source), with real Keystone credentials.
#
#   1. the OpenStack and Kerbside venvs (`kerbside-openstack setup`;
#      KERBSIDE_SOURCE=/path/to/kerbside installs that checkout into the
#      Kerbside venv instead of kerbside==0.8.0);
#   2. the guest image, resolved as the tests resolve it (guest_images);
#   3. the cloud up (`kerbside-openstack up --no-boot --upload`): the
#      image in Glance with the properties Nova needs; Kerbside's daemon
#      runs KERBSIDE_PROXY_BIN when set, and the Kerbside build under
#      test (versions, source, proxy binary and its sha256) is logged
#      and kept in cloud-up.json (kerbside_build);
#   4. per route (KTP_ROUTE=kerbside|direct; default both): a fresh
#      tempest workspace and tempest.conf for this cloud (pre-provisioned
#      credentials: a member the lane makes once and the cloud's admin,
#      in accounts.yaml; KTP_DYNAMIC_CREDENTIALS=1: tempest makes a
#      project and users per test class, as before issue 20), then
#      `tempest run --regex sextant` (kerbside: Nova's spice-direct URL,
#      Kerbside's /nova-console.vv, ryll through the proxy, and the cloud
#      promise test, which logs in to Kerbside's API with POST /auth;
#      direct: the token's host and port straight to the hypervisor);
#   5. the cloud down (always, also on failure, Ctrl-C or SIGTERM: the
#      signal first reaches `up` or tempest and its workers, each of
#      which deletes its guests before it exits; tools/job-signals.sh);
#   6. the verdicts and the artifact directory; non-zero exit on failure,
#      including when the tests were skipped.
#
# The same python environment rules as tools/direct-qemu-job.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUTES=${KTP_ROUTE:-kerbside direct}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${KTP_ARTIFACTS:-$ROOT/artifacts/openstack-$STAMP}
REGEX=${KTP_REGEX:-sextant}
TESTS_PER_ROUTE=4
# tests/scenario/test_kerbside_promises.py on the cloud (kerbside route
# only): SextantKerbsideCloudPromisesTest, terminate and the Nova token
# reused through Nova's console flow. The direct-qemu promise classes
# skip here, saying why.
PROMISE_TESTS=1
CLOUD=$OUT/cloud

log() { printf '[openstack %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 2; }

# shellcheck source=tools/job-lib.sh
. "$ROOT/tools/job-lib.sh"
# shellcheck source=tools/job-signals.sh
. "$ROOT/tools/job-signals.sh"
ktp_traps
# shellcheck disable=SC2086
ktp_check_routes $ROUTES
mkdir -p "$OUT"
log "artifacts: $OUT"

ktp_find_python "$ROOT"
find_tools() { "$PY" -m kerbside_tempest_plugin.common.tools "$@"; }
openstack() { "$PY" -m kerbside_tempest_plugin.cmd.openstack "$@"; }
TEMPEST=$(find_tools tempest) || die "tempest is not installed beside $PY"

# -- 1. venvs ----------------------------------------------------------
log "checking the OpenStack and Kerbside venvs (kerbside-openstack setup)"
openstack setup || die "kerbside-openstack setup failed"

# -- 2. the guest image ------------------------------------------------
IMAGE=$("$PY" -m kerbside_tempest_plugin.guest_images sextant) \
    || die "no guest image (above)"
log "guest image: $IMAGE${SEXTANT_IMAGE:+ (SEXTANT_IMAGE)}"

# -- 3. the cloud ------------------------------------------------------
teardown() {
    [ -f "$CLOUD/processes.json" ] || return 0
    log "cloud down"
    openstack down --workdir "$CLOUD" >"$OUT/cloud-down.json" \
        2>"$OUT/cloud-down.log" || log "cloud teardown reported leftovers \
(see $OUT/cloud-down.json)"
    rm -rf "$CLOUD/secrets"
}
trap teardown EXIT
stopped() {
    log "stopped by signal $KTP_SIGNAL; artifacts: $OUT"
    exit "$(ktp_signal_status)"     # the EXIT trap takes the cloud down
}
cloud_up() {
    openstack up --workdir "$CLOUD" --image "$IMAGE" --no-boot --upload \
        >"$OUT/cloud-up.json" 2>"$OUT/cloud-up.log"
}
t0=$SECONDS
log "cloud up in $CLOUD"
ktp_run cloud_up; up=$?
ktp_stopping && stopped
[ "$up" = 0 ] || { tail -20 "$OUT/cloud-up.log"; die "the cloud did not \
come up"; }
GLANCE_IMAGE=$("$PY" -c 'import json,sys; print(json.load(sys.stdin)
["image"])' <"$OUT/cloud-up.json") || die "no image id in cloud-up.json"
log "cloud up after $((SECONDS - t0)) s; Glance image $GLANCE_IMAGE"
"$PY" -c 'import json, sys
b = json.load(sys.stdin).get("kerbside_build") or {}
print("Kerbside under test: kerbside %s from %s; kerbside-proxy %s (sha256 "
      "%s, contract %s)" % (b.get("kerbside_version"), b.get("source"),
      b.get("proxy_bin"), (b.get("proxy_sha256") or "?")[:16],
      (b.get("proxy_contract_hash") or "?")[:16]))' <"$OUT/cloud-up.json" \
    | while read -r line; do log "$line"; done

# -- 4. tempest, once per route ----------------------------------------
run_tempest() {  # workspace [tempest run arguments]
    local ws=$1
    shift
    cd "$ws" && "$TEMPEST" run --serial --regex "$REGEX" "$@"
}
declare -A rc
for route in $ROUTES; do
    ws=$OUT/$route
    "$TEMPEST" init --name "ktp-os-$STAMP-$route" \
        --workspace-path "$OUT/workspace.yaml" "$ws" \
        >"$OUT/tempest-init-$route.log" 2>&1 \
        || { cat "$OUT/tempest-init-$route.log"; die "tempest init failed"; }
    openstack tempest-conf --workdir "$CLOUD" --workspace "$ws" \
        --route "$route" --image "$GLANCE_IMAGE" \
        ${KTP_DYNAMIC_CREDENTIALS:+--dynamic-credentials} >/dev/null \
        || die "cannot write tempest.conf"
    mkdir -p "$ws/lock" "$ws/artifacts"
    log "route $route: tempest, workspace $ws"
    t1=$SECONDS
    ktp_run run_tempest "$ws" "$@"
    rc[$route]=$?
    # The conf and accounts.yaml hold passwords: only the redacted
    # copies stay.
    mv -f "$ws/etc/tempest.redacted.conf" "$ws/etc/tempest.conf"
    if [ -f "$ws/etc/accounts.redacted.yaml" ]; then
        mv -f "$ws/etc/accounts.redacted.yaml" "$ws/etc/accounts.yaml"
    fi
    log "route $route: tempest exited ${rc[$route]} after $((SECONDS - t1)) s"
    ktp_stopping && stopped
done

# -- 5. teardown (also the EXIT trap) ----------------------------------
teardown
trap - EXIT

# -- 6. verdicts -------------------------------------------------------
rcs=()
for route in $ROUTES; do rcs+=("$route=${rc[$route]}"); done
ktp_verdicts "$OUT" "$TESTS_PER_ROUTE" "$PROMISE_TESTS" "$REGEX" "${rcs[@]}"
status=$?
log "job took $((SECONDS - t0)) s"
log "artifacts: $OUT"
if [ "$status" = 0 ]; then log "PASSED"; else log "FAILED"; fi
exit "$status"
