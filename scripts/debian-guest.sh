#!/usr/bin/env bash
# Builds a Linux test guest for vmkit from Debian packages (nothing is
# installed from them; they are downloaded and unpacked):
#
#   OUTDIR/vmlinuz     Debian's cloud kernel (bzImage), as shipped
#   OUTDIR/vmlinux     the uncompressed ELF kernel taken out of it (PVH entry note)
#   OUTDIR/initrd.img  gzip'd newc cpio: busybox-static, the virtio modules, /init
#   OUTDIR/initrd-qemu.img  the same for QEMU's PCI machines (q35/pc): also
#                      virtio_pci and qemu_fw_cfg, the static tool
#                      /bin/vmkit-blkio (scripts/vmkit-blkio.c), and an /init
#                      that runs a script the host passes through fw_cfg
#   OUTDIR/manifest    what was built from what ("kernel <version>" first)
#
# usage: scripts/debian-guest.sh [OUTDIR]      (default: target/debian-guest)
#
# The guest's /init loads the virtio-mmio, virtio-blk and virtio-net modules,
# prints `vmkit-linux: disks: ...` and `vmkit-linux: links: ...`, with
# `vmkit.ip=A/N vmkit.peer=P` on the kernel command line configures eth0 and
# prints `vmkit-linux: ping ok: P` or `vmkit-linux: ping failed: P`, then
# `vmkit-linux: ready`, and powers off (`poweroff -f`).
#
# initrd-qemu.img's /init does the same and, before `ready`, runs the shell
# script QEMU passes with `-fw_cfg name=opt/vmkit/script,file=PATH` (seen
# at /sys/firmware/qemu_fw_cfg/by_name/opt/vmkit/script/raw), printing
# `vmkit-linux: script exit <status>` after it.
#
# Idempotent: when OUTDIR/manifest already describes the packages apt would
# pick and this script's own contents, it only says so. Needs apt-get and
# dpkg-deb (any Debian); tools it lacks (readelf, lz4, zstd...) are installed
# with apt-get when run as root.
set -euo pipefail

KERNEL_META=linux-image-cloud-amd64
BUSYBOX_PKG=busybox-static
# Load order: each module only needs the ones before it (the packages ship no
# modules.dep). Modules the kernel has built in are left out.
MODULES=(virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net)
# initrd-qemu.img also has these, loaded after MODULES' virtio_mmio: virtio
# over PCI (virtio_pci needs the other two) and QEMU's fw_cfg in sysfs.
QEMU_MODULES=(virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci qemu_fw_cfg)
BLKIO_SRC=vmkit-blkio.c

log() { echo "debian-guest: $*"; }
die() {
    echo "debian-guest: error: $*" >&2
    exit 1
}

script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
# OUTDIR is relative to the caller's directory; the default, to the workspace.
OUT=${1:-$(dirname "$script")/../target/debian-guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$OUT"

for tool in apt-get apt-cache dpkg-deb; do
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

# need COMMAND PACKAGE: installs PACKAGE (as root) when COMMAND is missing.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "'$1' is missing: install the Debian package $2 (apt-get install $2)"
    apt-cache show "$2" >/dev/null 2>&1 || apt_update
    log "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null ||
        die "apt-get install $2 failed"
    command -v "$1" >/dev/null 2>&1 || die "'$1' is still missing after installing $2"
}

# One apt-cache call (each costs about half a second): the versions apt
# would install of the meta package and busybox, and the versioned kernel
# package the meta package pins ("Depends: linux-image-X (= V)").
resolve() {
    apt-cache show --no-all-versions "$KERNEL_META" "$BUSYBOX_PKG" 2>/dev/null | awk -v bb="$BUSYBOX_PKG" '
        /^Package:/ { pkg = $2 }
        /^Version:/ && pkg == bb { bv = $2 }
        /^Depends:/ && pkg != bb {
            n = split(substr($0, 10), deps, ",")
            for (i = 1; i <= n; i++)
                if (match(deps[i], /linux-image-[0-9][^ ]*/)) {
                    kp = substr(deps[i], RSTART, RLENGTH)
                    if (match(deps[i], /\(= [^)]*\)/)) kv = substr(deps[i], RSTART + 3, RLENGTH - 4)
                    break
                }
        }
        END { if (kp != "" && kv != "" && bv != "") print kp, kv, bv }'
}
resolved=$(resolve)
if [ -z "$resolved" ]; then
    apt_update
    resolved=$(resolve)
fi
[ -n "$resolved" ] ||
    die "apt cannot resolve $KERNEL_META (pinned versioned kernel) and $BUSYBOX_PKG: is Debian's main archive in the apt sources?"
read -r kernel_pkg kernel_ver busybox_ver <<<"$resolved"
kernel_release=${kernel_pkg#linux-image-}

blkio_src="$(dirname "$script")/$BLKIO_SRC"
[ -f "$blkio_src" ] || die "$blkio_src is missing"
script_sum=$(cat "$script" "$blkio_src" | sha256sum | cut -c1-16)
stamp="packages $kernel_pkg=$kernel_ver $BUSYBOX_PKG=$busybox_ver script=$script_sum"
if [ -f "$OUT/manifest" ] && grep -qxF "$stamp" "$OUT/manifest" &&
    [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/vmlinux" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/initrd-qemu.img" ]; then
    log "$OUT is up to date ($(head -n1 "$OUT/manifest"))"
    exit 0
fi

need readelf binutils
need gzip gzip
need sha256sum coreutils
need gcc gcc
# gcc -static needs libc.a (libc6-dev, which gcc only recommends).
if [ "$(gcc -print-file-name=libc.a)" = libc.a ]; then
    [ "$(id -u)" = 0 ] || die "gcc has no libc.a: install the Debian package libc6-dev (apt-get install libc6-dev)"
    log "installing libc6-dev (for gcc -static)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libc6-dev >/dev/null ||
        die "apt-get install libc6-dev failed"
fi

# Download (kept in OUT/debs, so a rebuild needs no network).
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
log "kernel $kernel_pkg $kernel_ver, $BUSYBOX_PKG $busybox_ver"
kernel_deb=$(fetch "$kernel_pkg" "$kernel_ver")
busybox_deb=$(fetch "$BUSYBOX_PKG" "$busybox_ver")

work="$OUT/work"
rm -rf "$work"
mkdir -p "$work/kernel" "$work/busybox"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"
bb="$work/busybox/bin/busybox"
[ -x "$bb" ] || die "$busybox_deb has no /bin/busybox"
vmlinuz="$work/kernel/boot/vmlinuz-$kernel_release"
[ -f "$vmlinuz" ] || die "$kernel_deb has no /boot/vmlinuz-$kernel_release"
moddir="$work/kernel/lib/modules/$kernel_release"
[ -d "$moddir" ] || die "$kernel_deb has no /lib/modules/$kernel_release"

# --- vmlinux: the compressed payload of the bzImage, decompressed ---------
# Setup header (Documentation/arch/x86/boot.rst): setup_sects at 0x1f1,
# "HdrS" at 0x202, version at 0x206, payload_offset/payload_length at
# 0x248/0x24c (protocol 2.08+), relative to the protected-mode code that
# starts after the (setup_sects + 1) 512-byte sectors of real-mode code.
u() { od -An -tu"$2" -j "$1" -N "$2" "$vmlinuz" | tr -d ' '; }
[ "$(od -An -c -j 0x202 -N 4 "$vmlinuz" | tr -d ' ')" = HdrS ] || die "$vmlinuz is not a bzImage (no HdrS)"
version=$(u 0x206 2)
[ "$version" -ge $((0x208)) ] || die "$vmlinuz: boot protocol $(printf %#x "$version") has no payload fields"
setup_sects=$(u 0x1f1 1)
[ "$setup_sects" -ne 0 ] || setup_sects=4
payload_at=$(((setup_sects + 1) * 512 + $(u 0x248 4)))
payload_len=$(u 0x24c 4)
magic=$(od -An -tx1 -j "$payload_at" -N 6 "$vmlinuz" | tr -d ' \n')
# Every format but gzip has the decompressed size appended (4 bytes).
strip=4
case $magic in
1f8b*) fmt=gzip strip=0 unpack=("$bb" gunzip -c) ;;
fd377a585a00) fmt=xz unpack=("$bb" unxz -c) ;;
425a68*) fmt=bzip2 unpack=("$bb" bunzip2 -c) ;;
5d0000*) fmt=lzma unpack=("$bb" unlzma -c) ;;
02214c18*) fmt=lz4 unpack=(lz4 -dc) && need lz4 lz4 ;;
28b52ffd*) fmt=zstd unpack=(zstd -dcq) && need zstd zstd ;;
894c5a*) fmt=lzo unpack=(lzop -dc) && need lzop lzop ;;
*) die "$vmlinuz: unknown payload compression (magic $magic at $payload_at)" ;;
esac
dd if="$vmlinuz" iflag=skip_bytes,count_bytes skip="$payload_at" count=$((payload_len - strip)) bs=1M status=none |
    "${unpack[@]}" >"$work/vmlinux" ||
    die "cannot decompress the $fmt payload of $vmlinuz"
[ "$(od -An -c -N 4 "$work/vmlinux" | tr -d ' ')" = '177ELF' ] || die "the $fmt payload of $vmlinuz is not an ELF file"
# The PVH entry: Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18), a 32-bit
# physical address. readelf 2.40 prints the type as a number, and the
# description on the same line (-W) or the next.
pvh_entry=$(readelf -nW "$work/vmlinux" | awk '
    /Xen/ && (/PHYS32_ENTRY/ || /\(0x00000012\)/) { found = 1 }
    found && /description data:/ { sub(/.*description data: */, "");
        n = split($0, b, " "); v = ""; for (i = (n < 4 ? n : 4); i >= 1; i--) v = v b[i];
        print "0x" v; exit }
    found && !/Xen/ { found = 0 }')
[ -n "$pvh_entry" ] || die "the vmlinux of $kernel_pkg has no PVH entry note (Xen PHYS32_ENTRY)"

# --- initrd ---------------------------------------------------------------
root="$work/initrd"
mkdir -p "$root"/{bin,dev,etc,lib/modules,proc,sys,tmp,root}
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
loaded=()
builtin=()
# add_module NAME DIR: copies NAME.ko (uncompressed) to DIR, or notes that
# the kernel has it built in.
add_module() {
    local m=$1 dir=$2 ko
    ko=$(find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) -print -quit)
    if [ -z "$ko" ]; then
        # modules.builtin names built-in ones by path, with - or _.
        grep -qE "/${m//_/[-_]}\.ko$" "$moddir/modules.builtin" ||
            die "$kernel_pkg has $m neither as a module nor built in"
        builtin+=("$m")
        return 0
    fi
    case $ko in
    *.ko) cp "$ko" "$dir/$m.ko" ;;
    *.xz) "$bb" unxz -c "$ko" >"$dir/$m.ko" ;;
    *.gz) "$bb" gunzip -c "$ko" >"$dir/$m.ko" ;;
    *.zst) need zstd zstd && zstd -dcq "$ko" >"$dir/$m.ko" ;;
    esac
    loaded+=("$m")
}
for m in "${MODULES[@]}"; do
    add_module "$m" "$root/lib/modules"
done
echo "${loaded[*]}" >"$root/etc/modules"

cat >"$root/init" <<'EOF'
#!/bin/sh
# vmkit's Debian test guest (scripts/debian-guest.sh): report what the VMM
# gave us on the serial console, then power off.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "vmkit-linux: $*"; }

read -r modules </etc/modules
for m in $modules; do
    insmod "/lib/modules/$m.ko" || say "error: insmod $m failed"
done
# From here on only emergencies reach the console ("reboot: Power down"
# among them), so that kernel messages cannot split the report's lines.
dmesg -n 1

disks=
for d in /sys/block/*; do
    [ -e "$d" ] || continue
    n=${d##*/}
    case $n in loop* | ram* | zram*) continue ;; esac
    sectors=$(cat "$d/size")
    serial=$(cat "$d/serial" 2>/dev/null || true)
    disks="$disks $n=$((sectors * 512))${serial:+:$serial}"
done
say "disks:${disks:- none}"
links=
for l in /sys/class/net/*; do
    [ -e "$l" ] || continue
    n=${l##*/}
    [ "$n" = lo ] && continue
    links="$links $n=$(cat "$l/address")"
done
say "links:${links:- none}"

addr='' peer=''
read -r cmdline </proc/cmdline
for w in $cmdline; do
    case $w in
    vmkit.ip=*) addr=${w#vmkit.ip=} ;;
    vmkit.peer=*) peer=${w#vmkit.peer=} ;;
    esac
done
if [ -n "$addr" ] && [ -n "$peer" ]; then
    result=failed
    if ip link set lo up && ip addr add "$addr" dev eth0 && ip link set eth0 up; then
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            if ping -c 1 -W 2 "$peer" >/dev/null 2>&1; then
                result=ok
                break
            fi
        done
    fi
    say "ping $result: $peer"
    [ "$result" = ok ] || { ip addr; ip route; dmesg | tail -n 20; }
fi

say ready
poweroff -f
EOF
chmod 755 "$root/init"

# The kernel opens /dev/console before /init runs (init mounts devtmpfs
# over /dev and reopens it anyway); only root can make the node.
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$root/dev/console" c 5 1
fi
# pack DIR IMAGE. Reproducible: fixed times, root owner, sorted names, gzip
# without a name.
pack() {
    find "$1" -exec touch -h -d @0 {} +
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 2>/dev/null) |
        gzip -n -9 >"$2"
}
pack "$root" "$work/initrd.img"

# --- initrd-qemu.img --------------------------------------------------------
qroot="$work/initrd-qemu"
cp -a "$root" "$qroot"
base_modules=("${loaded[@]}")
base_builtin=("${builtin[@]}")
loaded=()
qemu_order=()
for m in "${MODULES[@]}"; do
    qemu_order+=("$m")
    [ "$m" = virtio_mmio ] && qemu_order+=("${QEMU_MODULES[@]}")
done
for m in "${qemu_order[@]}"; do
    add_module "$m" "$qroot/lib/modules"
done
qemu_modules=("${loaded[@]}")
loaded=("${base_modules[@]}")
builtin=("${base_builtin[@]}")
echo "${qemu_modules[*]}" >"$qroot/etc/modules"
gcc -O2 -static -pthread -Wall -o "$qroot/bin/vmkit-blkio" "$blkio_src" ||
    die "cannot build $blkio_src statically (gcc -static needs libc6-dev's libc.a)"
strip "$qroot/bin/vmkit-blkio"
# The fw_cfg hook goes in just before `say ready`.
hook='script=/sys/firmware/qemu_fw_cfg/by_name/opt/vmkit/script/raw
if [ -f "$script" ]; then
    cat "$script" >/tmp/script
    sh /tmp/script
    say "script exit $?"
fi'
awk -v hook="$hook" '$0 == "say ready" { print hook } { print }' "$root/init" >"$qroot/init"
grep -q qemu_fw_cfg "$qroot/init" || die "the fw_cfg hook did not go into initrd-qemu.img's /init"
pack "$qroot" "$work/initrd-qemu.img"

# --- outputs --------------------------------------------------------------
cp "$vmlinuz" "$work/vmlinuz"
{
    echo "kernel $kernel_release"
    echo "vmlinuz-protocol $(printf %#x "$version")"
    echo "vmlinuz-compression $fmt"
    echo "pvh-entry $pvh_entry"
    echo "modules ${loaded[*]}"
    echo "builtin ${builtin[*]:-}"
    echo "qemu-modules ${qemu_modules[*]}"
    echo "$stamp"
} >"$work/manifest"
for f in vmlinuz vmlinux initrd.img initrd-qemu.img manifest; do
    mv -f "$work/$f" "$OUT/$f"
done
size() { echo "$(($(stat -c %s "$OUT/$1") / 1024)) KiB"; }
log "built $OUT: kernel $kernel_release ($fmt bzImage, $(size vmlinuz); vmlinux $(size vmlinux), PVH entry $pvh_entry), initrd.img $(size initrd.img) (modules: ${loaded[*]}), initrd-qemu.img $(size initrd-qemu.img)"
