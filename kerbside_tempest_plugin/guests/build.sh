#!/usr/bin/env bash
# Builds the test guest images from the sources next to this script (they
# ship as package data) into $IMAGES_OUT.
#
#   IMAGES_OUT=DIR build.sh            every guest whose sources changed
#   IMAGES_OUT=DIR build.sh sextant    one guest
#   FORCE=1 IMAGES_OUT=DIR build.sh    rebuild even when nothing changed
#
# Callers: images/build.sh in a checkout (IMAGES_OUT=images/out) and
# kerbside_tempest_plugin.guest_images (a per-user cache directory), so an
# installed plugin builds its guests without a checkout.
#
# Each guest is one build_<name> function plus an entry in GUESTS; a guest
# is skipped when the hash of its inputs (sources, this script, the font,
# tool versions) matches the stamp left by its last successful build.
# Needs Debian 12 packages only: gnu-efi, binutils, gcc, mtools, qemu-utils,
# python3 and an 8x16 console font (console-data or console-setup-linux).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${IMAGES_OUT:?IMAGES_OUT must name the output directory}
GUESTS=(sextant sextant_blits latency)

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }

need() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || die "missing tool '$t' (Debian 12:" \
            "gcc, binutils, mtools, qemu-utils, python3; see bindep.txt)"
    done
}

# sources_hash FILE...: one hash over the named files' contents and names.
sources_hash() {
    local f
    for f in "$@"; do
        printf '%s\n' "${f#"$HERE"/}"
        cat "$f"
    done | sha256sum | cut -d' ' -f1
}

# up_to_date NAME HASH OUTPUT...: true when the stamp matches and every
# output exists.
up_to_date() {
    local name=$1 hash=$2 f
    shift 2
    [ "${FORCE:-0}" = 1 ] && return 1
    [ -f "$OUT/$name.stamp" ] || return 1
    [ "$(cat "$OUT/$name.stamp")" = "$hash" ] || return 1
    for f in "$@"; do [ -s "$f" ] || return 1; done
}

# ---- shared EFI helpers ----------------------------------------------------

EFI_INC=/usr/include/efi
EFI_LIB=/usr/lib
EFI_CFLAGS=(-O2 -std=gnu11 -Wall -Wextra -Wno-unused-parameter
    -fpic -fshort-wchar -fno-stack-protector -mno-red-zone
    -fno-strict-aliasing -fno-asynchronous-unwind-tables -ffreestanding
    -DEFI_FUNCTION_WRAPPER -I"$EFI_INC" -I"$EFI_INC/x86_64")

# efi_app OUT.efi BUILD_DIR INCLUDE_DIR... -- SOURCE.c...
# (EXTRA_CFLAGS, an array, is added to every compile: a variant's -D flags)
EXTRA_CFLAGS=()
efi_app() {
    local efi=$1 bdir=$2 incs=() objs=() src obj
    shift 2
    while [ "$1" != -- ]; do incs+=(-I"$1"); shift; done
    shift
    for src in "$@"; do
        obj=$bdir/$(basename "${src%.c}").o
        gcc "${EFI_CFLAGS[@]}" ${EXTRA_CFLAGS[@]+"${EXTRA_CFLAGS[@]}"} \
            "${incs[@]}" -c "$src" -o "$obj"
        objs+=("$obj")
    done
    ld -nostdlib -znocombreloc -shared -Bsymbolic \
        -T "$EFI_LIB/elf_x86_64_efi.lds" "$EFI_LIB/crt0-efi-x86_64.o" \
        "${objs[@]}" -L"$EFI_LIB" -lefi -lgnuefi -o "$bdir/app.so"
    objcopy -j .text -j .sdata -j .data -j .dynamic -j .dynsym -j .rel \
        -j .rela -j .reloc --target=efi-app-x86_64 "$bdir/app.so" "$efi"
}

# esp_image EFI IMG QCOW2: a 33 MiB FAT32 image (no partition table, label
# ESP) holding EFI/BOOT/BOOTX64.EFI, plus its qcow2 conversion.
esp_image() {
    local efi=$1 img=$2 qcow=$3 tmp=$2.tmp
    rm -f "$tmp"
    dd if=/dev/zero of="$tmp" bs=1M count=33 status=none
    export MTOOLS_SKIP_CHECK=1
    mformat -i "$tmp" -F -v ESP ::
    mmd -i "$tmp" ::/EFI ::/EFI/BOOT
    mcopy -i "$tmp" "$efi" ::/EFI/BOOT/BOOTX64.EFI
    qemu-img convert -f raw -O qcow2 "$tmp" "$qcow.tmp"
    mv -f "$tmp" "$img"
    mv -f "$qcow.tmp" "$qcow"
}

# ---- the Sextant-compatible guest -----------------------------------------

FONT_CANDIDATES=(
    /usr/share/consolefonts/default8x16.psf.gz
    /usr/share/consolefonts/Lat15-Fixed16.psf.gz
    /usr/share/consolefonts/lat1-16.psf.gz
)

pick_font() {
    local f
    if [ -n "${SEXTANT_FONT:-}" ]; then
        [ -f "$SEXTANT_FONT" ] || die "SEXTANT_FONT=$SEXTANT_FONT not found"
        echo "$SEXTANT_FONT"
        return
    fi
    for f in "${FONT_CANDIDATES[@]}"; do
        [ -f "$f" ] && { echo "$f"; return; }
    done
    die "no 8x16 console font (install console-data); tried ${FONT_CANDIDATES[*]}"
}

# sextant_variant NAME CFLAG...: the Sextant guest built with CFLAGs into
# $OUT/NAME.{img,qcow2,efi}; the flags are part of the up-to-date hash.
sextant_variant() {
    local name=$1 src=$HERE/sextant font hash
    shift
    local bdir=$OUT/build/$name img=$OUT/$name.img qcow=$OUT/$name.qcow2
    local efi=$OUT/$name.efi
    need gcc ld objcopy mformat mmd mcopy qemu-img python3 sha256sum
    [ -f "$EFI_LIB/crt0-efi-x86_64.o" ] || die "gnu-efi is not installed" \
        "(apt-get install -y gnu-efi)"
    font=$(pick_font)
    hash=$( { sources_hash "$HERE/build.sh" "$src"/*.c "$src"/*.h "$src"/*.py "$font"
              echo "flags: $*"
              gcc --version | head -1; ld --version | head -1
              dpkg-query -W -f='${Version}' gnu-efi 2>/dev/null || true; } |
            sha256sum | cut -d' ' -f1)
    if up_to_date "$name" "$hash" "$img" "$qcow" "$efi"; then
        log "$name: up to date ($qcow)"
        return
    fi
    log "$name: building (font $(basename "$font"), flags: ${*:-none})"
    rm -rf "$bdir"
    mkdir -p "$bdir"
    python3 "$src/psf2h.py" "$font" "$bdir/font8x16.h"
    EXTRA_CFLAGS=("$@")
    efi_app "$efi.tmp" "$bdir" "$src" "$bdir" -- "$src"/*.c
    EXTRA_CFLAGS=()
    mv -f "$efi.tmp" "$efi"
    esp_image "$efi" "$img" "$qcow"
    echo "$hash" > "$OUT/$name.stamp"
    log "$name: built $qcow ($(stat -c %s "$qcow") bytes," \
        "BOOTX64.EFI $(stat -c %s "$efi") bytes)"
}

# The stand-in: its QR is one 180x180 blit per refresh.
build_sextant() { sextant_variant sextant; }

# The same guest painting its QR as a real Sextant does, one 4x4 blit per
# module (2,025 per refresh): the load the capture pipeline must keep up
# with (docs/plans/capture-fidelity.md). Image: $OUT/sextant_blits.qcow2.
build_sextant_blits() { sextant_variant sextant_blits -DSX_QR_BLITS=1; }

# ---- the latency guest ------------------------------------------------------
# latency/ has its own build.sh, which does the build and the up-to-date
# check, so this only delegates to it.

build_latency() {
    if [ ! -f "$HERE/latency/build.sh" ]; then
        log "latency: no latency/build.sh, skipping"
        return
    fi
    OUT_DIR=$OUT bash "$HERE/latency/build.sh"
}

main() {
    local g
    mkdir -p "$OUT"
    if [ $# -eq 0 ]; then set -- "${GUESTS[@]}"; fi
    for g in "$@"; do
        declare -F "build_$g" >/dev/null || die "unknown guest '$g' (have: ${GUESTS[*]})"
        "build_$g"
    done
}

main "$@"
