#!/usr/bin/env bash
# Run a command with the project venv's tools first on PATH (for the
# pre-commit hooks, which run without an activated venv). Inside a venv
# (tox, an activated shell) its tools are used as they are.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -d "$VENV/bin" ]; then
    PATH="$VENV/bin:$PATH"
fi
command -v "$1" >/dev/null || {
    echo "in-venv: $1 is not in $VENV/bin nor on PATH:" \
         "run ./tools/setup.sh" >&2
    exit 1
}
exec "$@"
