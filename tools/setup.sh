#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for the harness: system
# packages from bindep.txt, the project venv (.venv), the Kerbside lane venv
# and the guest images (~/.cache/kerbside-tempest-plugin/images). Idempotent:
# a second run only checks. Needs nothing on PATH but the system's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # bindep reads bindep.txt; install it into a tiny venv of its own so
    # that the system python is never touched.
    if [ ! -x "$ROOT/.venv-bindep/bin/bindep" ]; then
        if ! $PY -m venv "$ROOT/.venv-bindep" 2>/dev/null; then
            log "python venv module missing: installing python3-venv"
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
            $PY -m venv "$ROOT/.venv-bindep"
        fi
        "$ROOT/.venv-bindep/bin/pip" install -q bindep
    fi
    missing=$("$ROOT/.venv-bindep/bin/bindep" -b test lane image || true)
    if [ -n "$missing" ]; then
        log "installing system packages: $(echo $missing)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends $missing
    else
        log "system packages: all present"
    fi
else
    log "not root or no apt-get: skipping system packages (see bindep.txt)"
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    $PY -m venv "$VENV"
fi
log "installing the project, its extras and test requirements into $VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r requirements.txt -r test-requirements.txt \
    tox
"$VENV/bin/pip" install -q -e ".[shakenfist,plot,mcp]"

# Everything below runs the venv's programs by path: nothing here (nor in
# what they start) relies on .venv/bin being on PATH.
log "preparing the Kerbside lane venv"
"$VENV/bin/kerbside-harness" setup

log "building the guest images (the bundled guests, into the user cache)"
"$VENV/bin/python" -m kerbside_tempest_plugin.guest_images --bundled

log "setup done"
