# Shared by the job scripts (tools/direct-qemu-job.sh,
# tools/openstack-job.sh, tools/wheel-install-test.sh): sourced, never
# run. Each script defines log() and die() before sourcing this.

# ktp_check_routes ROUTE...: every route is kerbside or direct.
ktp_check_routes() {
    local route
    for route in "$@"; do
        case $route in kerbside|direct) ;; *)
            die "KTP_ROUTE must name kerbside and/or direct, not '$route'";;
        esac
    done
}

# ktp_find_python ROOT: set PY to the python environment that holds
# tempest and the plugin ($PYTHON; else the active venv, $VIRTUAL_ENV, as
# tox sets it; else the checkout's .venv), and check that it imports both.
ktp_find_python() {
    PY=${PYTHON:-}
    if [ -z "$PY" ]; then
        if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
            PY=$VIRTUAL_ENV/bin/python
        elif [ -x "$1/.venv/bin/python" ]; then
            PY=$1/.venv/bin/python
        else
            die "no python environment with tempest and the plugin: run \
tools/setup.sh, or set PYTHON"
        fi
    fi
    # Absolute: the runners call it from their own workspaces.
    case $PY in
        */*) PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY") \
                 || die "no directory for PYTHON=$PYTHON";;
    esac
    # stestr's test command runs ${PYTHON:-python} too.
    [ -z "${PYTHON:-}" ] || PYTHON=$PY
    "$PY" -I -c 'import tempest, kerbside_tempest_plugin' 2>/dev/null \
        || die "$PY cannot import tempest and kerbside_tempest_plugin; run \
tools/setup.sh, or set PYTHON"
    log "python: $PY"
}

# ktp_verdicts OUT PER_ROUTE PROMISES REGEX ROUTE=RC...: print every
# test's verdict, write OUT/index.html, check that no kept artifact holds
# a token, and return non-zero when the summary, the leak check or any
# route's runner failed. The summary fails unless enough tests wrote a
# verdict: PER_ROUTE scenario tests (result.json) on each route given,
# plus PROMISES promise tests (promise.json; they run on the kerbside
# route only) when the kerbside route is among them; for REGEX=promises
# only the latter; for any other REGEX (a narrowed run) one.
ktp_verdicts() {
    local out=$1 per_route=$2 promises=$3 regex=$4 expect status item
    shift 4
    case " $* " in *" kerbside="*) ;; *) promises=0;; esac
    case $regex in
        sextant) expect=$((per_route * $# + promises));;
        promises) expect=$promises;;
        *) expect=1;;
    esac
    echo
    log "verdicts"
    "$PY" -m kerbside_tempest_plugin.cmd.summary --expect "$expect" "$out"
    status=$?
    # One page linking every test's report.html, for a person with a
    # browser.
    "$PY" -m kerbside_tempest_plugin.scenario.html_report index "$out" \
        >/dev/null && log "reports: $out/index.html"
    "$PY" -m kerbside_tempest_plugin.cmd.leakcheck "$out" || status=1
    for item in "$@"; do
        log "route ${item%%=*}: runner exit ${item#*=}"
        [ "${item#*=}" = 0 ] || status=1
    done
    return "$status"
}
