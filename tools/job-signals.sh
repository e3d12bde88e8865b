# Signals for the job scripts (tools/direct-qemu-job.sh,
# tools/openstack-job.sh): sourced, never run, after job-lib.sh (it uses
# the script's log()).
#
# bash runs a trap only once the foreground command has ended, so a
# SIGTERM to a job (a CI job's timeout, tox passing on a Ctrl-C) used to
# wait for the whole tempest run. Instead:
#
# - ktp_run COMMAND... runs a long step (tempest, the cloud's `up`) in
#   the background and waits for it; its status is the step's.
# - ktp_traps makes SIGTERM, SIGINT and SIGHUP to the script pass SIGTERM
#   on to the running step and to everything below it in the script's
#   process group (tempest, stestr, their shells and workers: each worker
#   tears its lane down, then dies of the signal; tests/scenario). The
#   lanes' own processes run in sessions of their own, left to their
#   owners and the lanes' reapers. So does the death of the job's parent
#   when tox runs the job (TOX_ENV_NAME set): tox exits at once on a
#   SIGTERM, passing nothing on.
# - Once signalled, the step and every process signalled have
#   KTP_STOP_TIMEOUT seconds (default 120) to end; then they get SIGKILL
#   (the lanes' reapers finish their teardown) and, 10 s later, the job
#   stops waiting for them.
# - ktp_stopping says whether a signal came; the script then runs its
#   safety net and exits with ktp_signal_status (128 + the signal).
#
# A signal during a step run in the foreground (setup, the image build)
# takes effect when that step ends; those start no lane.

KTP_SIGNAL=         # the number of the first signal, once one came
KTP_STEP=           # the pid of the step ktp_run waits for
KTP_TREE=           # every pid signalled on the way down
KTP_STOP_TIMEOUT=${KTP_STOP_TIMEOUT:-120}
KTP_PARENT=$PPID

ktp_traps() {
    trap 'ktp_on_signal TERM 15' TERM
    trap 'ktp_on_signal INT 2' INT
    trap 'ktp_on_signal HUP 1' HUP
}

ktp_stopping() { [ -n "$KTP_SIGNAL" ]; }

ktp_signal_status() { echo $((128 + KTP_SIGNAL)); }

# ktp_on_signal NAME NUMBER: the traps' action.
ktp_on_signal() {
    if ktp_stopping; then
        log "SIG$1 again: already stopping"
        return
    fi
    KTP_SIGNAL=$2
    # Our output may have no reader any more (tox gone): a write must not
    # end the job before the teardown.
    trap '' PIPE
    if [ -n "$KTP_STEP" ]; then
        log "SIG$1: passing SIGTERM on to the running step (pid $KTP_STEP)" \
            "and its processes; then the teardown"
        ktp_signal_tree TERM "$KTP_STEP"
    else
        log "SIG$1: stopping before the next step; then the teardown"
    fi
}

# ktp_tree ROOT: ROOT and every process below it that is in this
# script's process group.
ktp_tree() {
    local pgid
    pgid=$(ps -o pgid= -p $$ | tr -d ' ')
    ps -e -o pid=,ppid=,pgid= | awk -v root="$1" -v pgid="$pgid" '
        { up[$1] = $2; group[$1] = $3 }
        END {
            for (p in up) {
                q = p
                while (q != root && (q in up)) q = up[q]
                if (q == root && group[p] == pgid) print p
            }
        }'
}

# ktp_signal_tree SIG ROOT: SIG to ktp_tree ROOT, but to no pid already
# signalled (a worker tearing down is not told twice).
ktp_signal_tree() {
    local p new=
    for p in $(ktp_tree "$2"); do
        case " $KTP_TREE " in *" $p "*) ;; *) new="$new $p";; esac
    done
    KTP_TREE="$KTP_TREE$new"
    # shellcheck disable=SC2086
    [ -z "$new" ] || kill -s "$1" $new 2>/dev/null
}

# ktp_living PID...: those of PID... that run (zombies do not).
ktp_living() {
    local p s
    for p in "$@"; do
        { read -r s <"/proc/$p/stat"; } 2>/dev/null || continue
        s=${s##*) }
        [ "${s%% *}" = Z ] || echo "$p"
    done
}

# ktp_parent_gone: under tox, tox (the job's parent) has exited.
ktp_parent_gone() {
    local s
    [ -n "${TOX_ENV_NAME:-}" ] || return 1
    { read -r s <"/proc/$$/stat"; } 2>/dev/null || return 1
    s=${s##*) }
    s=${s#* }
    [ "${s%% *}" != "$KTP_PARENT" ]
}

# ktp_run COMMAND...: run COMMAND in the background and wait for it (and,
# once a signal came, for everything signalled) as described above.
# Returns its status; 128 + the signal when a signal came before it
# started (it is not started then), 137 when it outlived its SIGKILL.
ktp_run() {
    local rc deadline= killed= living
    if ktp_stopping; then
        return "$(ktp_signal_status)"
    fi
    "$@" &
    KTP_STEP=$!
    while :; do
        if ! ktp_stopping && ktp_parent_gone; then
            trap '' PIPE
            log "tox (pid $KTP_PARENT) has exited: stopping as on SIGTERM"
            ktp_on_signal TERM 15
        fi
        if ktp_stopping; then
            # Also what started since the signal (a worker's shell).
            ktp_signal_tree TERM "$KTP_STEP"
            [ -n "$deadline" ] || deadline=$((SECONDS + KTP_STOP_TIMEOUT))
        fi
        # shellcheck disable=SC2086
        living=$(ktp_living "$KTP_STEP" $KTP_TREE)
        [ -n "$living" ] || break
        if [ -n "$killed" ] && [ "$SECONDS" -ge "$killed" ]; then
            log "still there 10 s after SIGKILL:" $living "; not waiting"
            KTP_STEP=
            return 137
        elif [ -z "$killed" ] && [ -n "$deadline" ] && \
                [ "$SECONDS" -ge "$deadline" ]; then
            log "still running ${KTP_STOP_TIMEOUT} s after the signal:" \
                $living "; SIGKILL (the lanes' reapers finish)"
            # shellcheck disable=SC2086
            kill -s KILL $living 2>/dev/null
            killed=$((SECONDS + 10))
        fi
        sleep 0.5
    done
    wait "$KTP_STEP" 2>/dev/null
    rc=$?
    KTP_STEP=
    return "$rc"
}
