#!/usr/bin/env bash
# Build the kerbside latency guest: latency/latency.c (gnu-efi) ->
# EFI/BOOT/BOOTX64.EFI on a FAT32 disk -> $OUT_DIR/latency.qcow2 (the
# caller, ../build.sh, sets OUT_DIR to its $IMAGES_OUT).
#
# Self-contained: needs only the Debian 12 packages gnu-efi, mtools,
# dosfstools and qemu-utils (plus gcc/binutils). Skips the build when the
# sources and this script are unchanged since the last successful build
# (their hash is kept in $OUT_DIR/latency.sha256). FORCE=1 rebuilds.
# OUT_DIR overrides the output directory.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT_DIR=${OUT_DIR:-$(cd "$HERE/.." && pwd)/out}
IMAGE=$OUT_DIR/latency.qcow2
STAMP=$OUT_DIR/latency.sha256
DISK_MIB=40   # FAT32 needs >= 65525 clusters: 33 MiB at 512 B per cluster

log() { printf '[latency-guest] %s\n' "$*"; }

mkdir -p "$OUT_DIR"
hash=$(cat "$HERE/latency.c" "$HERE/build.sh" | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$IMAGE" ] && [ -f "$STAMP" ] \
        && [ "$(cat "$STAMP")" = "$hash" ]; then
    log "up to date: $IMAGE"
    exit 0
fi

for tool in gcc ld objcopy mformat mmd mcopy qemu-img; do
    command -v "$tool" >/dev/null || {
        log "missing tool: $tool (install gnu-efi, mtools, dosfstools," \
            "qemu-utils, gcc)"
        exit 1
    }
done
EFI_INC=${EFI_INC:-/usr/include/efi}
EFI_LIB=${EFI_LIB:-/usr/lib}
for f in "$EFI_INC/efi.h" "$EFI_LIB/crt0-efi-x86_64.o" \
        "$EFI_LIB/elf_x86_64_efi.lds" "$EFI_LIB/libgnuefi.a"; do
    [ -e "$f" ] || { log "missing $f (install gnu-efi)"; exit 1; }
done

WORK=$(mktemp -d "$OUT_DIR/.latency-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "compiling latency.c"
gcc -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
    -fpic -fshort-wchar -fno-stack-protector -fno-strict-aliasing \
    -mno-red-zone -DEFI_FUNCTION_WRAPPER \
    -I"$EFI_INC" -I"$EFI_INC/x86_64" \
    -c "$HERE/latency.c" -o "$WORK/latency.o"
ld -nostdlib -znocombreloc -shared -Bsymbolic \
    -T "$EFI_LIB/elf_x86_64_efi.lds" "$EFI_LIB/crt0-efi-x86_64.o" \
    "$WORK/latency.o" -o "$WORK/latency.so" \
    -L"$EFI_LIB" -lefi -lgnuefi
objcopy -j .text -j .sdata -j .data -j .dynamic -j .dynsym \
    -j .rel -j .rela -j .reloc --target=efi-app-x86_64 \
    "$WORK/latency.so" "$WORK/BOOTX64.EFI"

log "making the FAT32 boot disk (${DISK_MIB} MiB)"
truncate -s "${DISK_MIB}M" "$WORK/disk.img"
export MTOOLS_SKIP_CHECK=1
mformat -i "$WORK/disk.img" -F -c 1 -v LATENCY ::
mmd -i "$WORK/disk.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/disk.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

qemu-img convert -f raw -O qcow2 "$WORK/disk.img" "$WORK/latency.qcow2"
mv -f "$WORK/latency.qcow2" "$IMAGE"
echo "$hash" > "$STAMP"
log "built $IMAGE"
