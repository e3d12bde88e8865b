#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for the harness: system
# packages from bindep.txt (libvirt for the OpenStack lane from
# bookworm-backports, see below), the project venv (.venv), the Kerbside
# lane venv, the OpenStack lane's venv and the guest images
# (~/.cache/kerbside-tempest-plugin/images). Idempotent: a second run only
# checks. Needs nothing on PATH but the system's.
#
# KTP_SETUP_OPENSTACK=0 leaves the OpenStack lane out (its system packages
# and its venv, about 1 GiB): the direct-qemu lane needs none of it.
#
# A Kerbside developer's own build: KERBSIDE_SOURCE=/path/to/kerbside
# installs that checkout into the Kerbside venv (which both lanes use)
# instead of kerbside==0.8.0, and KERBSIDE_PROXY_BIN=/path/to/kerbside-proxy
# is the proxy every lane's daemon runs (checked here). `kerbside-harness
# setup` prints the build that makes as JSON (kerbside_build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}
OPENSTACK=${KTP_SETUP_OPENSTACK:-1}
PROFILES="test lane image"
[ "$OPENSTACK" = 0 ] || PROFILES="$PROFILES openstack"

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }

# libvirt comes from bookworm-backports (below), and `-t
# bookworm-backports` would take qemu from there too (10.0 today, whose
# SPICE support is a separate module package): keep the harness on
# Debian 12's qemu and OVMF, which everything here was measured with.
qemu_from_bookworm() {
    cat >/etc/apt/preferences.d/kerbside-tempest-plugin-qemu <<EOF
Package: qemu-system qemu-system-x86 qemu-system-common qemu-system-data qemu-system-gui qemu-system-modules-* qemu-block-extra qemu-utils
Pin: release n=bookworm-backports
Pin-Priority: -1
EOF
}

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
    # Nova 34 cannot boot a UEFI guest on Debian 12's libvirt 9.0 (it
    # refuses Nova's <loader secure='no'/> with firmware autoselection;
    # docs/plans/openstack-lane.md): the OpenStack lane takes libvirt
    # 11.3 from bookworm-backports, which leaves qemu and OVMF alone.
    if [ "$OPENSTACK" != 0 ] && ! /usr/sbin/libvirtd --version 2>/dev/null \
            | awk '{split($NF, v, "."); ok = v[1] >= 10} END {exit !ok}'; then
        . /etc/os-release
        if [ "${VERSION_CODENAME:-}" = bookworm ] && ! grep -rqs \
                bookworm-backports /etc/apt/sources.list \
                /etc/apt/sources.list.d; then
            log "adding bookworm-backports to apt's sources (for libvirt)"
            cat >/etc/apt/sources.list.d/bookworm-backports.sources <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        fi
        log "installing libvirt from bookworm-backports"
        qemu_from_bookworm
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -t bookworm-backports \
            libvirt-daemon-system libvirt-dev
    fi
    # A machine where libvirt came from backports before the pin (above)
    # existed got backports' qemu 10 with it: without its separate spice
    # module package no guest starts ("There is no option group 'spice'"),
    # and nothing here was measured on it. Put Debian 12's qemu back.
    if [ "$OPENSTACK" != 0 ] && dpkg-query -W -f '${Version}\n' \
            qemu-system-x86 2>/dev/null | grep -q '~bpo'; then
        qemu_from_bookworm
        log "replacing backports' qemu with Debian 12's (see above)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends --allow-downgrades \
            qemu-system-x86/bookworm qemu-system-common/bookworm \
            qemu-system-data/bookworm
    fi
    # shellcheck disable=SC2086
    missing=$("$ROOT/.venv-bindep/bin/bindep" -b $PROFILES || true)
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
log "preparing the Kerbside lane venv${KERBSIDE_SOURCE:+ from \
$KERBSIDE_SOURCE}${KERBSIDE_PROXY_BIN:+, proxy $KERBSIDE_PROXY_BIN}"
"$VENV/bin/kerbside-harness" setup

if [ "$OPENSTACK" != 0 ]; then
    # Keystone, Placement, Glance, Neutron and Nova (pinned, PyPI) in a
    # venv of their own, plus the clients of Kerbside's Nova flow in the
    # Kerbside venv.
    log "preparing the OpenStack lane venv (kerbside-openstack setup)"
    "$VENV/bin/kerbside-openstack" setup
fi

log "building the guest images (the bundled guests, into the user cache)"
"$VENV/bin/python" -m kerbside_tempest_plugin.guest_images --bundled

log "setup done"
