#!/usr/bin/env bash
# Builds (or finds in the cache) the test guest: a Debian 12 kernel plus a base initramfs holding
# busybox, open-iscsi (iscsid, iscsiadm and their shared libraries), the kernel modules the iSCSI
# initiator, sd and ext4 need, and for the multipath case multipath-tools (multipathd, multipath,
# their checker/prioritizer plugins), dmsetup and the device-mapper multipath modules. Prints the
# cache directory, which holds `vmlinuz` (bzImage), `vmlinux` (the same kernel uncompressed, for a
# fast PVH boot), `initramfs.cpio` and `kernel-version`. run.sh appends a second, per-run archive
# with /init (from guest-init.sh) and the run's parameters, so editing the guest script never
# rebuilds this.
#
# Everything downloaded lives under the cache (outside the repo); nothing fetched is committed. The
# cache key covers the package versions and this directory's scripts, so a rerun with nothing changed
# only prints the directory.
#
# Usage: build-guest.sh [--quiet]
# Env:   VMI_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/overlaybd-target/vm)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${VMI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/overlaybd-target/vm}
quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
log() { [ "$quiet" = 1 ] || echo "build-guest: $*" >&2; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=0
apt_update_once() {
    [ "$apt_updated" = 1 ] && return 0
    log "apt-get update"
    $sudo apt-get update -qq >&2
    apt_updated=1
}

# Host tools: qemu to boot the guest, cpio to pack it, e2fsprogs (debugfs) for the host-side checks.
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v debugfs >/dev/null || need_pkgs+=(e2fsprogs)
command -v dpkg-deb >/dev/null || die "dpkg-deb missing: this script needs a Debian-family host"
if [ ${#need_pkgs[@]} -gt 0 ]; then
    apt_update_once
    log "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

# Fast path: apt-cache is slow on a loaded machine (seconds per call), so remember which guest the
# current apt lists and this script led to, and reuse it while neither has changed.
lists_stamp() {
    {
        stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* 2>/dev/null || true
        cat "$here/build-guest.sh"
    } | sha256sum | cut -c1-16
}
stamp=$(lists_stamp)
if [ -f "$cache_root/current" ]; then
    read -r cur_stamp cur_dir < "$cache_root/current" || true
    if [ "${cur_stamp:-}" = "$stamp" ] && [ -f "${cur_dir:-/nonexistent}/done" ]; then
        log "cached: $cur_dir"
        echo "$cur_dir"
        exit 0
    fi
fi

# Candidate version of a package, or empty when apt knows nothing about it.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'; }

[ -n "$(candidate busybox-static)" ] || apt_update_once
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt lists missing?)"

# The packages unpacked into the guest. open-iscsi's and multipath-tools' own libraries come along
# so that ldd resolves them from the unpacked tree; the rest of the closure (libc, libssl's deps,
# libudev...) comes from the host.
pkgs=("$kpkg" busybox-static open-iscsi libopeniscsiusr libisns0 libkmod2 libssl3
    multipath-tools libdevmapper1.02.1 dmsetup liburcu8 libaio1)
versions=""
for p in "${pkgs[@]}"; do
    v=$(candidate "$p")
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version for $p"
    versions+="$p=$v "
done

key=$(
    {
        echo "$versions"
        cat "$here/build-guest.sh"
        ldd --version 2>&1 | sed -n 1p
    } | sha256sum | cut -c1-16
)
out="$cache_root/guest-$key"
if [ -f "$out/done" ]; then
    log "cached: $out"
    echo "$(lists_stamp) $out" > "$cache_root/current"
    echo "$out"
    exit 0
fi

log "building guest $key ($versions)"
mkdir -p "$cache_root/debs"
# One build at a time (parallel runs share the cache); the loser of the race finds it built.
exec 9> "$cache_root/.lock"
flock 9
if [ -f "$out/done" ]; then
    echo "$(lists_stamp) $out" > "$cache_root/current"
    echo "$out"
    exit 0
fi
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Download each .deb once per version into debs/<pkg>=<version>/.
for pv in $versions; do
    p=${pv%%=*}
    d="$cache_root/debs/$pv"
    if ! ls "$d"/*.deb >/dev/null 2>&1; then
        log "downloading $pv"
        mkdir -p "$d.part"
        (cd "$d.part" && apt-get download -q "$pv" >&2 2>/dev/null) ||
            (cd "$d.part" && apt-get download "$pv" >&2) || die "apt-get download $pv failed"
        rm -rf "$d"
        mv "$d.part" "$d"
    fi
    dpkg-deb -x "$d"/*.deb "$work/pkgroot"
done

pkgroot="$work/pkgroot"
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,etc/iscsi,lib,proc,sys,dev,run,tmp,mnt,var/lib/iscsi,var/lock,root}

# --- kernel and modules -------------------------------------------------------------------------
kernels=("$pkgroot"/boot/vmlinuz-*)
vmlinuz=${kernels[0]}
[ -f "$vmlinuz" ] || die "no kernel in $kpkg"
kver=${vmlinuz##*/vmlinuz-}
moddir="$pkgroot/lib/modules/$kver"
[ -d "$moddir" ] || die "no modules for $kver"

declare -A modpath=() seen=()
while IFS= read -r f; do
    n=${f##*/}
    n=${n%%.ko*}
    modpath[${n//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko*')
builtin_list="$moddir/modules.builtin"

# The module's own file, decompressed when Debian ships it compressed.
module_bytes() {
    case "$1" in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -qdc "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}

# Depth-first: dependencies (from modinfo's depends=, read straight from .modinfo) before the module.
order=()
add_module() {
    local m=${1//-/_}
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    local f=${modpath[$m]:-}
    if [ -z "$f" ]; then
        if grep -q "/${m}.ko\$\|/${m//_/-}.ko\$" "$builtin_list" 2>/dev/null; then
            return 0
        fi
        die "module $m is neither a module file nor built in"
    fi
    local deps d
    # awk reads to the end: an early-exiting reader would SIGPIPE the pipeline under pipefail.
    deps=$(module_bytes "$f" | tr '\0' '\n' | awk -F= '/^depends=/ && !done { print $2; done = 1 }')
    for d in ${deps//,/ }; do add_module "$d"; done
    order+=("$m")
}
# iscsi_tcp: the initiator; sd_mod: the disk; ext4 for the mount checks; crc32c for digests;
# virtio_net/virtio_pci for the user-mode network. Every case loads these (etc/modules.order).
for m in virtio_pci virtio_net iscsi_tcp sd_mod ext4 crc32c_generic crc32c_intel; do add_module "$m"; done
base_count=${#order[@]}
# Only the multipath case loads these (etc/modules.multipath, in dependency order): device-mapper
# multipath with its round-robin path selector, and the ALUA device handler, which must be loaded
# before the login so that it attaches to the disks as sd finds them.
for m in dm_mod dm_multipath dm_round_robin scsi_dh_alua; do add_module "$m"; done

dest_moddir="$rootfs/lib/modules/$kver"
mkdir -p "$dest_moddir"
: > "$rootfs/etc/modules.order"
: > "$rootfs/etc/modules.multipath"
for i in "${!order[@]}"; do
    m=${order[i]}
    f=${modpath[$m]}
    rel=${f#"$moddir"/}
    rel=${rel%%.ko*}.ko
    mkdir -p "$dest_moddir/$(dirname "$rel")"
    module_bytes "$f" > "$dest_moddir/$rel"
    if [ "$i" -lt "$base_count" ]; then
        echo "/lib/modules/$kver/$rel" >> "$rootfs/etc/modules.order"
    else
        echo "/lib/modules/$kver/$rel" >> "$rootfs/etc/modules.multipath"
    fi
done
cp "$builtin_list" "$dest_moddir/" 2>/dev/null || true
log "kernel $kver, modules: ${order[*]:0:base_count}; multipath case: ${order[*]:base_count}"

# --- busybox ------------------------------------------------------------------------------------
cp "$pkgroot/bin/busybox" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
for applet in modprobe insmod depmod poweroff; do ln -sf ../bin/busybox "$rootfs/sbin/$applet"; done

# --- open-iscsi and multipath-tools with their shared-library closure -----------------------------
# multipath-tools keeps libmultipath, libmpathutil... in /lib itself.
libpath="$pkgroot/lib:$pkgroot/lib/x86_64-linux-gnu:$pkgroot/usr/lib/x86_64-linux-gnu"
# copy_with_libs FILE DEST: copies FILE (an executable or a plugin) to DEST in the guest, and every
# shared library ldd finds for it under the same path as in the tree it was resolved from.
copy_with_libs() {
    local src=$1 b=${1##*/} lib target
    mkdir -p "$rootfs$(dirname "$2")"
    cp "$src" "$rootfs$2"
    LD_LIBRARY_PATH=$libpath ldd "$src" | while read -r a b2 c _; do
        if [ "$b2" = "=>" ]; then
            [ "$c" = "not" ] && die "$b: $a not found"
            lib=$c
        else
            lib=$a
        fi
        case "$lib" in /*) ;; *) continue ;; esac
        # Store under the soname's standard directory, whatever tree it was resolved from.
        case "$lib" in
            "$pkgroot"/*) target=${lib#"$pkgroot"} ;;
            *) target=$lib ;;
        esac
        mkdir -p "$rootfs$(dirname "$target")"
        cp -L "$lib" "$rootfs$target"
    done
}
for b in iscsid iscsiadm multipathd multipath dmsetup; do
    src="$pkgroot/sbin/$b"
    [ -f "$src" ] || src="$pkgroot/usr/sbin/$b"
    [ -f "$src" ] || die "$b not found in the unpacked packages"
    copy_with_libs "$src" "/sbin/$b"
done
# multipathd loads its path checkers and prioritizers (tur, alua...) from /lib/multipath.
[ -d "$pkgroot/lib/multipath" ] || die "no /lib/multipath plugins in multipath-tools"
for f in "$pkgroot"/lib/multipath/*.so; do copy_with_libs "$f" "/lib/multipath/${f##*/}"; done
# usr-merged lookups: the loader searches /lib/x86_64-linux-gnu and /usr/lib/x86_64-linux-gnu.
mkdir -p "$rootfs/usr/lib/x86_64-linux-gnu" "$rootfs/lib/x86_64-linux-gnu"
# glibc loads libgcc_s when a thread is cancelled; multipathd cancels threads, and without it
# glibc aborts multipathd at start ("libgcc_s.so.1 must be installed for pthread_cancel to
# work"). ldd cannot see a dlopen, so it comes from the host by name.
gcc_s=""
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do
    if [ -f "$d/libgcc_s.so.1" ]; then gcc_s=$d/libgcc_s.so.1; break; fi
done
[ -n "$gcc_s" ] || die "libgcc_s.so.1 not found on the host (package libgcc-s1)"
cp -L "$gcc_s" "$rootfs/lib/x86_64-linux-gnu/libgcc_s.so.1"
cp "$pkgroot/etc/iscsi/iscsid.conf" "$rootfs/etc/iscsi/iscsid.conf.dist"

# iscsid refuses iscsiadm's requests when uid 0 has no passwd entry.
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
echo 'root:x:0:' > "$rootfs/etc/group"
echo "$kver" > "$rootfs/etc/kernel-version"

mkdir -p "$work/out"
# Uncompressed: under TCG on a loaded host, gunzip in the guest took up to 13 s of the boot.
(cd "$rootfs" && find . | cpio -o -H newc --quiet) > "$work/out/initramfs.cpio"
cp "$vmlinuz" "$work/out/vmlinuz"
# The bzImage's own decompressor runs for 3-13 s under TCG before the kernel prints anything. QEMU
# can boot the uncompressed ELF directly (PVH entry), so unpack it here: try each compression magic
# in the bzImage until one yields an ELF file. Without it run.sh boots the bzImage.
extract_vmlinux() {
    local magic cmd off
    for magic in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
        cmd=${magic%%:*}
        command -v "$cmd" >/dev/null || continue
        for off in $(LC_ALL=C grep -obUaP "${magic#*:}" "$vmlinuz" | cut -d: -f1); do
            # The payload is followed by other data, so the decompressor may complain at the end.
            tail -c +$((off + 1)) "$vmlinuz" | "$cmd" -dc > "$work/vmlinux" 2>/dev/null || true
            if [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                mv "$work/vmlinux" "$work/out/vmlinux"
                return 0
            fi
        done
    done
    rm -f "$work/vmlinux"
    log "no uncompressed kernel found in the bzImage; booting the bzImage"
}
extract_vmlinux
echo "$kver" > "$work/out/kernel-version"
echo "$versions" > "$work/out/versions"
touch "$work/out/done"
rm -rf "$out"
mv "$work/out" "$out"
# Older guests (other package versions) are dead weight now.
for old in "$cache_root"/guest-*; do
    [ "$old" = "$out" ] || rm -rf "$old"
done
echo "$(lists_stamp) $out" > "$cache_root/current"
log "built $out ($(du -sh "$out/initramfs.cpio" | cut -f1) initramfs)"
echo "$out"
