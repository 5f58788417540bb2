#!/usr/bin/env bash
# Makes the qcow2 target's seed corpus from images qemu-img creates:
# cluster sizes from 512 B to 64 KiB, refcount widths from 1 to 64 bits,
# version 2 and 3, lazy refcounts, zstd, written, zeroed, discarded and
# compressed clusters, an internal snapshot. Each seed is what the harness
# reads: two little-endian bytes n, n bytes of operations, the image.
#
#   fuzz/scripts/qcow2-seeds.sh [OUT_DIR] [--large]
#
# OUT_DIR defaults to fuzz/corpus/qcow2 (committed: small images only).
# --large adds 64 KiB-cluster images (about 200-400 KiB each) for a local
# campaign; keep them out of the committed corpus.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/corpus/qcow2}"
large=false
[ "${2:-}" = "--large" ] && large=true
command -v qemu-img >/dev/null || { echo "qcow2-seeds.sh: qemu-img is missing (apt-get install qemu-utils)" >&2; exit 1; }
command -v qemu-io >/dev/null || { echo "qcow2-seeds.sh: qemu-io is missing (apt-get install qemu-utils)" >&2; exit 1; }
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# A fixed operations prefix per seed (the fuzzer mutates it): 48 bytes
# derived from the seed's name, so the corpus is reproducible.
ops() {
    printf '%s' "$1" | sha256sum | cut -c1-64 | xxd -r -p
    printf '%s' "$1-more" | sha256sum | cut -c1-32 | xxd -r -p
}

seed() {
    local name="$1" img="$2"
    {
        printf '\x30\x00' # 48 bytes of operations
        ops "$name"
        cat "$img"
    } >"$out/seed-$name"
}

# make NAME SIZE OPTIONS [QEMU-IO-COMMAND...]
make() {
    local name="$1" size="$2" opts="$3"
    shift 3
    local img="$tmp/$name.qcow2"
    qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    if [ "${#args[@]}" -gt 0 ]; then
        qemu-io -f qcow2 "$img" "${args[@]}" >/dev/null
    fi
    seed "$name" "$img"
}

make c512-rc16 256K cluster_size=512 "write -P 0xaa 0 512" "write -P 0x55 8192 1024"
make c512-rc1 256K cluster_size=512,refcount_bits=1 "write -P 0x11 512 512"
make c512-v2 128K cluster_size=512,compat=0.10 "write -P 0x22 0 1536"
make c1k-rc8-lazy 512K cluster_size=1024,refcount_bits=8,lazy_refcounts=on "write -P 0x33 4096 2048"
make c2k-rc4 1M cluster_size=2048,refcount_bits=4 "write -P 0x44 0 2048" "write -z 8192 4096"
make c4k-rc32 1M cluster_size=4096,refcount_bits=32 "write -P 0x66 12288 8192" "discard 12288 4096"
make c4k-zstd 1M cluster_size=4096,compression_type=zstd "write -P 0x77 0 4096"
make c512-empty 64K cluster_size=512
make c512-rc64 128K cluster_size=512,refcount_bits=64 "write -P 0x12 1024 512"

# Compressed clusters (deflate), through convert -c.
raw="$tmp/raw.img"
qemu-img create -q -f raw "$raw" 64K
qemu-io -f raw "$raw" -c "write -P 0x5a 0 4096" -c "write -P 0xa5 16384 8192" >/dev/null
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$raw" "$tmp/comp.qcow2"
seed c4k-compressed "$tmp/comp.qcow2"

# An internal snapshot: clusters shared between the snapshot and the
# active L1 table (refcount 2).
make c512-snap 64K cluster_size=512 "write -P 0x99 0 1024"
qemu-img snapshot -c snap1 "$tmp/c512-snap.qcow2"
qemu-io -f qcow2 "$tmp/c512-snap.qcow2" -c "write -P 0x98 512 512" >/dev/null
seed c512-snapshot "$tmp/c512-snap.qcow2"

if $large; then
    make c64k-rc16 16M cluster_size=65536 "write -P 0xab 0 65536" "write -P 0xcd 1048576 4096"
    make c64k-rc2 8M cluster_size=65536,refcount_bits=2 "write -P 0xef 65536 65536"
fi
ls -l "$out" | awk 'NR > 1 { n++; s += $5 } END { printf "qcow2-seeds.sh: %d seeds, %d bytes\n", n, s }'
