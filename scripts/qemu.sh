#!/usr/bin/env bash
# Prepares QEMU's x86_64 system emulator in a private folder, for the tests
# and benches that run a Linux guest under QEMU (tests/vhost_user.rs,
# benches/vhost_user_blk.rs):
#
#   OUTDIR/qemu-system-x86_64   a wrapper that runs the unpacked emulator with
#                               its firmware (-L) and module folders
#   OUTDIR/root/                Debian's qemu-system-x86, qemu-system-common,
#                               qemu-system-data and seabios, unpacked
#   OUTDIR/manifest             what it was built from ("qemu <version>" first)
#
# usage: scripts/qemu.sh [OUTDIR]      (default: target/qemu)
#
# The packages are downloaded with `apt-get download` and unpacked with
# `dpkg-deb -x`; they are NOT installed: installing Debian's qemu-system-x86
# would make apt remove a newer qemu-utils (qemu-img, the test oracle). Only
# the shared libraries the emulator links against are installed, with
# apt-get, as root, and only after a simulation shows that apt removes
# nothing. The wrapper sets QEMU_MODULE_DIR (TCG is a loadable module in
# Debian's build) and passes `-L` for QEMU's and SeaBIOS's firmware.
#
# Idempotent: when OUTDIR/manifest describes the packages apt would pick
# and this script's contents, and the emulator starts, it only says so.
set -euo pipefail

PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
MAIN=qemu-system-x86

log() { echo "qemu.sh: $*"; }
die() {
    echo "qemu.sh: error: $*" >&2
    exit 1
}

script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
OUT=${1:-$(dirname "$script")/../target/qemu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$OUT"

for tool in apt-get apt-cache dpkg-deb dpkg-query ldd; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing: this script needs apt and dpkg (Debian and its derivatives)"
done

apt_updated=
apt_update() {
    [ -z "$apt_updated" ] || return 0
    [ "$(id -u)" = 0 ] || die "the package lists need an update and that needs root: run 'apt-get update' as root"
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
    apt_updated=1
}

# The versions apt would pick, one "name version" line per package.
resolve() {
    apt-cache show --no-all-versions "${PACKAGES[@]}" 2>/dev/null |
        awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }'
}
resolved=$(resolve)
if [ "$(echo "$resolved" | grep -c .)" -ne "${#PACKAGES[@]}" ]; then
    apt_update
    resolved=$(resolve)
fi
[ "$(echo "$resolved" | grep -c .)" -eq "${#PACKAGES[@]}" ] ||
    die "apt cannot resolve ${PACKAGES[*]}: is Debian's main archive in the apt sources?"
declare -A version
while read -r p v; do version[$p]=$v; done <<<"$resolved"

wrapper="$OUT/qemu-system-x86_64"
script_sum=$(sha256sum "$script" | cut -c1-16)
stamp="packages"
for p in "${PACKAGES[@]}"; do stamp="$stamp $p=${version[$p]}"; done
stamp="$stamp script=$script_sum"
# The emulator starts (its libraries are still installed) and has TCG.
works() { "$wrapper" -accel help 2>/dev/null | grep -qx tcg; }
if [ -f "$OUT/manifest" ] && grep -qxF "$stamp" "$OUT/manifest" && [ -x "$wrapper" ] && works; then
    log "$OUT is up to date ($(head -n1 "$OUT/manifest"))"
    exit 0
fi

# --- download -------------------------------------------------------------
debs="$OUT/debs"
mkdir -p "$debs"
# fetch PACKAGE VERSION: prints the path of its .deb, downloading it if needed.
fetch() {
    local pkg=$1 ver=$2 f
    for f in "$debs/${pkg}"_*.deb; do
        [ -f "$f" ] || continue
        if [ "$(dpkg-deb -f "$f" Version 2>/dev/null)" = "$ver" ]; then
            echo "$f"
            return 0
        fi
        rm -f "$f"
    done
    local sandbox=()
    # As root, apt drops to the _apt user, which cannot write here.
    [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$debs" && apt-get download -q "${sandbox[@]}" "$pkg=$ver" >/dev/null) ||
        die "apt-get download $pkg=$ver failed"
    for f in "$debs/${pkg}"_*.deb; do
        [ -f "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && {
            echo "$f"
            return 0
        }
    done
    die "apt-get download $pkg=$ver left no .deb in $debs"
}
declare -A deb
for p in "${PACKAGES[@]}"; do
    deb[$p]=$(fetch "$p" "${version[$p]}")
done
log "${MAIN} ${version[$MAIN]}, seabios ${version[seabios]} (downloaded to $debs)"

# --- unpack ---------------------------------------------------------------
rm -rf "$OUT/root.new"
mkdir -p "$OUT/root.new"
for p in "${PACKAGES[@]}"; do
    dpkg-deb -x "${deb[$p]}" "$OUT/root.new"
done
rm -rf "$OUT/root.new/usr/share/doc" "$OUT/root.new/usr/share/man"
bin="$OUT/root.new/usr/bin/qemu-system-x86_64"
[ -x "$bin" ] || die "${deb[$MAIN]} has no /usr/bin/qemu-system-x86_64"
moddir=$(dirname "$(find "$OUT/root.new/usr/lib" -name 'accel-tcg-x86_64.so' -print -quit)")
[ "$moddir" != . ] || die "the unpacked packages have no accel-tcg-x86_64.so (QEMU's TCG module)"
moddir=${moddir#"$OUT/root.new/"}

# --- runtime libraries ------------------------------------------------------
# The library packages qemu-system-x86 depends on (dpkg-shlibdeps wrote
# them from the binary's NEEDED entries), first alternative of each, without
# version constraints; those not installed yet are installed.
libs=()
missing=()
for dep in $(dpkg-deb -f "${deb[$MAIN]}" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/ //g'); do
    case $dep in lib* | zlib*) libs+=("$dep") ;; *) continue ;; esac
    status=$(dpkg-query -W -f '${db:Status-Abbrev}' "$dep" 2>/dev/null || true)
    [ "${status:0:2}" = ii ] || missing+=("$dep")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "QEMU needs these libraries: apt-get install --no-install-recommends ${missing[*]} (as root)"
    apt-cache show "${missing[@]}" >/dev/null 2>&1 || apt_update
    sim=$(DEBIAN_FRONTEND=noninteractive apt-get install -s -q --no-install-recommends "${missing[@]}" 2>&1) ||
        die "apt-get install -s ${missing[*]} failed:"$'\n'"$sim"
    if grep -q '^Remv ' <<<"$sim"; then
        die "installing ${missing[*]} would remove packages, refused:"$'\n'"$(grep '^Remv ' <<<"$sim")"
    fi
    log "installing QEMU's runtime libraries: ${missing[*]}"
    out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" 2>&1) ||
        die "apt-get install ${missing[*]} failed:"$'\n'"$out"
fi
notfound=$(ldd "$bin" | grep 'not found' || true)
[ -z "$notfound" ] || die "qemu-system-x86_64 still lacks libraries:"$'\n'"$notfound"

# --- wrapper ----------------------------------------------------------------
cat >"$OUT/root.new/qemu-system-x86_64" <<EOF
#!/bin/sh
# Generated by scripts/qemu.sh: Debian's qemu-system-x86_64 ${version[$MAIN]},
# unpacked beside this file, with its firmware and module folders.
here=\$(dirname "\$(readlink -f "\$0")")
export QEMU_MODULE_DIR="\$here/root/$moddir"
exec "\$here/root/usr/bin/qemu-system-x86_64" -L "\$here/root/usr/share/qemu" -L "\$here/root/usr/share/seabios" "\$@"
EOF
chmod 755 "$OUT/root.new/qemu-system-x86_64"

rm -rf "$OUT/root"
mv "$OUT/root.new" "$OUT/root"
mv -f "$OUT/root/qemu-system-x86_64" "$wrapper"
qemu_version=$("$wrapper" -version | head -n1) || die "the unpacked QEMU does not start"
works || die "the unpacked QEMU has no TCG accelerator"
{
    echo "qemu ${version[$MAIN]}"
    echo "binary $qemu_version"
    echo "libraries ${libs[*]}"
    echo "libraries-installed-by-this-run ${missing[*]:-}"
    echo "$stamp"
} >"$OUT/manifest"
if command -v qemu-img >/dev/null; then
    log "qemu-img is still $(qemu-img --version | head -n1)"
fi
log "ready: $wrapper ($qemu_version; $(du -sh "$OUT/root" | cut -f1) unpacked, $(du -sh "$debs" | cut -f1) of .debs)"
