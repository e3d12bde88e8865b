#!/usr/bin/env bash
# Builds the test guest images of this checkout into images/out/
# (git-ignored). The sources and the recipe live in the package,
# kerbside_tempest_plugin/guests/, so that an installed plugin can build
# them too (kerbside_tempest_plugin.guest_images builds into a per-user
# cache); this wrapper only picks the checkout's output directory.
#
#   images/build.sh            build every guest whose sources changed
#   images/build.sh sextant    build one guest
#   FORCE=1 images/build.sh    rebuild even when nothing changed
#   IMAGES_OUT=/tmp/x images/build.sh sextant   another output directory
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export IMAGES_OUT=${IMAGES_OUT:-$HERE/out}
exec bash "$HERE/../kerbside_tempest_plugin/guests/build.sh" "$@"
