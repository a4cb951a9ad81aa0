#!/usr/bin/env bash
# Boots a small Linux guest under QEMU whose kernel iSCSI initiator (iscsi_tcp) and open-iscsi log in
# to an iSCSI target on this host, and checks the disk it gets against the target's backing image.
# Prints one `RESULT <case> PASS|FAIL <time> <reason>` line per check and exits non-zero when any
# check fails or is missing. See README.md beside this file.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

usage() {
    cat <<'EOF'
usage: run.sh --portal HOST:PORT --iqn IQN (--image PATH | --expect-size N --expect-first-mib HASH)
              [options]

  --portal HOST:PORT     the target's portal as seen from this host (127.0.0.1 is reached from the
                         guest as 10.0.2.2)
  --iqn IQN              target name expected in SendTargets and used for login
  --image PATH           the target's backing image on this host: size, first-MiB md5 and (for ext4)
                         file hashes are computed from it before the guest boots
  --expect-size N, --expect-first-mib HASH
                         instead of --image (e.g. for an overlaybd image): the disk size in bytes
                         and the md5 (32 hex digits) or sha256 (64) of its first MiB
  --fs ext4|none|auto    whether to mount the disk (default: from the image's superblock magic; without
                         --image, auto: the guest looks at the disk's magic itself)
  --lun N                LUN that must show up as the disk (default 0; tgt uses 1)
  --chap-user U --chap-secret S
                         log in with CHAP (one-way)
  --chap-in-user U --chap-in-secret S
                         mutual CHAP: the target must answer the initiator's challenge with these
  --digests on|off       shorthand for --header-digest/--data-digest CRC32C (on) or None (off)
  --header-digest V, --data-digest V
                         what the initiator offers: None, CRC32C or CRC32C,None (default None)
  --files P1,P2          paths inside the ext4 image to hash (default: every regular file when the
                         image is at most 512 MiB, hashing files up to 4 MiB)
  --rw                   also mount read-write, write files, log out, log in again and read them back
                         (CHANGES THE IMAGE: point the target at a scratch copy)
  --raw-write            write 4 x 1 MiB (O_DIRECT) at the end of the disk, read it back, then restore
                         the old data (needs a writable LUN; works on any image)
  --rw-kib N             size of the random file written by --rw (default 256)
  --no-host-verify       with --rw, do not check the written files in the image on the host after
                         the run (for targets whose writes do not land in PATH)
  --full-md5             also compare the whole disk with the image, as md5s of 8 MiB chunks (reads
                         under TCG run at 2-100 MB/s, depending on the load)
  --restart-read         read the whole disk in passes until one pass saw the connection drop, and
                         compare its md5 with the image's (restart_read; use with --on-read)
  --read-loop N          N O_DIRECT reads of 1 MiB (offsets stepping through the disk), each timed:
                         prints INFO read_ms lines and the number of reads over 1 s (read_loop;
                         fails when a read fails; a diagnostic for slow reads, see README.md)
  --on-read CMD          host command run (with bash -c, in the background) once the guest starts
                         the --restart-read passes, e.g. one that kills and restarts the target
                         (the same as --on reading CMD)
  --on MARK CMD          host command run (bash -c, in the background, once) when the guest prints
                         `VMI: MARK` on its result port; its output goes to LOGS/on-MARK.log. Marks:
                         reading (--restart-read), hotplug-add and hotplug-remove (--hotplug),
                         mp-cut and mp-restore (--multipath)
  --hotplug IMAGE        after the checks of --lun, a LUN is added and force-removed on the host
                         while the session is up: the guest prints `VMI: hotplug-add` (the hook
                         must add IMAGE as --hotplug-lun), rescans until that disk shows up, mounts
                         it read-only and compares --hotplug-marker and every file with IMAGE
                         (hotplug_add); then prints `VMI: hotplug-remove` (the hook must remove the
                         LUN), reads it until a read fails, rescans until the disk is gone and
                         reads the first MiB of --lun again (hotplug_remove). IMAGE: ext4
  --hotplug-lun N        the number the added LUN gets (default 1)
  --hotplug-marker PATH  the file in IMAGE that --image lacks or holds differently, so that the
                         guest can tell the two disks apart (default marker.txt)
  --scsi-log             record every SCSI command (tracefs) and report CHECK CONDITIONs with sense
  --timeout SECS         bound for the whole run (default 300)
  --disk-wait SECS       how long the guest waits for the disk after login (default 20)
  --accel auto|tcg|kvm   auto: TCG under the nested kvm_pvm hypervisor, else try KVM, fall back to TCG
  --logs DIR             keep console.log, results.log, session.txt, scsi.log there (default: a
                         new directory under ${TMPDIR:-/tmp})
  --mem MIB, --smp N     guest size (default 512, 1)
  --iscsi-recv softirq|workqueue
                         where the guest's iscsi_tcp reads its socket: softirq (the kernel's
                         default) or its workqueue (module parameter recv_from_iscsi_q=1). Under
                         the user-mode network, softirq reads stall for ~5 s now and then (see
                         README.md, "Slow reads"); workqueue reads do not
  --tap IFNAME           network the guest through this existing tap device (the host side holds
                         10.0.2.2/24, e.g. in a network namespace made by ci.sh) instead of QEMU's
                         user-mode network (slirp); the portal must then be reachable at 10.0.2.2
  --pcap FILE            record the guest's network traffic (QEMU filter-dump, first 256 bytes of
                         each frame) to FILE
  --container FILE       the node case instead of the disk checks: the target binary (--bin) runs
                         in the guest and `attach` makes disks of images on the host's registry;
                         FILE holds the guest's parameters as shell assignments (REGISTRY as the
                         guest reaches it, APP_REF, APP_FIRST_LINE, APP_OUTPUT_MD5, APP2_REF,
                         APP2_FIRST_LINE). --portal, --iqn and --image are then not used
  --bin PATH             the overlaybd-target binary put into the guest (stripped, with the shared
                         libraries it needs) for --container
  --multipath HOST:PORT  the multipath case instead of the disk checks: LUN --lun of --iqn through
                         --portal and through this second portal (e.g. a fault proxy in front of
                         the target's second portal), assembled by multipathd into one device; a
                         write/read workload on it while the host cuts the second path (hook mark
                         mp-cut) and restores it (mp-restore); with --image, the region the
                         guest wrote last is compared with the image afterwards (mp_host_verify)
EOF
}

die() {
    echo "run.sh: ERROR: $*" >&2
    exit 2
}

portal="" iqn="" image="" exp_size="" exp_1m="" fs="" lun=0 chap_user="" chap_secret="" hdig=None ddig=None files=""
chap_in_user="" chap_in_secret="" restart_read=0 read_loop=0
hotplug="" hotplug_lun=1 hotplug_marker=marker.txt
# The host hooks: on_marks[i] is the guest's mark, on_cmds[i] the command it fires.
on_marks=() on_cmds=()
container="" bin="" portal2=""
rw=0 raw_write=0 rw_kib=256 host_verify=1 full_md5=0 scsi_log=0 timeout=300 disk_wait=20 accel=auto logs="" mem=512 smp=1 tap="" pcap="" iscsi_recv=softirq
while [ $# -gt 0 ]; do
    case "$1" in
        --portal) portal=$2; shift ;;
        --iqn) iqn=$2; shift ;;
        --image) image=$2; shift ;;
        --expect-size) exp_size=$2; shift ;;
        --expect-first-mib) exp_1m=$2; shift ;;
        --fs) fs=$2; shift ;;
        --lun) lun=$2; shift ;;
        --chap-user) chap_user=$2; shift ;;
        --chap-secret) chap_secret=$2; shift ;;
        --chap-in-user) chap_in_user=$2; shift ;;
        --chap-in-secret) chap_in_secret=$2; shift ;;
        --restart-read) restart_read=1 ;;
        --on-read) on_marks+=(reading); on_cmds+=("$2"); shift ;;
        --on)
            [[ "${2:-}" =~ ^[a-z][a-z-]*$ ]] && [ $# -ge 3 ] || die "--on takes a mark (letters and -) and a command"
            on_marks+=("$2"); on_cmds+=("$3"); shift 2 ;;
        --hotplug) hotplug=$2; shift ;;
        --hotplug-lun) hotplug_lun=$2; shift ;;
        --hotplug-marker) hotplug_marker=$2; shift ;;
        --read-loop) read_loop=$2; shift ;;
        --digests)
            case "$2" in
                on) hdig=CRC32C ddig=CRC32C ;;
                off) hdig=None ddig=None ;;
                *) die "--digests takes on or off" ;;
            esac
            shift ;;
        --header-digest) hdig=$2; shift ;;
        --data-digest) ddig=$2; shift ;;
        --files) files=$2; shift ;;
        --rw) rw=1 ;;
        --raw-write) raw_write=1 ;;
        --rw-kib) rw_kib=$2; shift ;;
        --no-host-verify) host_verify=0 ;;
        --full-md5) full_md5=1 ;;
        --scsi-log) scsi_log=1 ;;
        --timeout) timeout=$2; shift ;;
        --disk-wait) disk_wait=$2; shift ;;
        --accel) accel=$2; shift ;;
        --logs) logs=$2; shift ;;
        --mem) mem=$2; shift ;;
        --smp) smp=$2; shift ;;
        --iscsi-recv) iscsi_recv=$2; shift ;;
        --tap) tap=$2; shift ;;
        --pcap) pcap=$2; shift ;;
        --container) container=$2; shift ;;
        --bin) bin=$2; shift ;;
        --multipath) portal2=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument $1" ;;
    esac
    shift
done
if [ -n "$container" ]; then
    [ -r "$container" ] || die "cannot read --container $container"
    [ -x "$bin" ] || die "--container needs --bin PATH (the overlaybd-target binary)"
    # The disk checks below are not run: placeholders keep their parameter checks quiet.
    portal=${portal:-127.0.0.1:3260} iqn=${iqn:-none} exp_size=${exp_size:-0}
    exp_1m=${exp_1m:-00000000000000000000000000000000} fs=none
fi
if [ -z "$portal" ] || [ -z "$iqn" ]; then usage >&2; die "--portal and --iqn are required"; fi
if [ -n "$image" ]; then
    [ -r "$image" ] || die "cannot read image $image"
    [ -z "$exp_size$exp_1m" ] || die "--image and --expect-* exclude each other"
else
    [[ "$exp_size" =~ ^[0-9]+$ ]] || die "without --image, --expect-size BYTES is required"
    [[ "$exp_1m" =~ ^([0-9a-f]{32}|[0-9a-f]{64})$ ]] || die "--expect-first-mib takes an md5 or sha256 in hex"
    [ "$full_md5" = 0 ] || die "--full-md5 needs --image"
    [ -z "$files" ] || die "--files needs --image"
    [ "$restart_read" = 0 ] || die "--restart-read needs --image"
    host_verify=0
fi
case "$fs" in "" | ext4 | none | auto) ;; *) die "--fs takes ext4, none or auto" ;; esac
case "$iscsi_recv" in softirq | workqueue) ;; *) die "--iscsi-recv takes softirq or workqueue" ;; esac
[[ "$portal" == *:* ]] || die "--portal must be HOST:PORT"
[ -z "$portal2" ] || [[ "$portal2" == *:* ]] || die "--multipath takes HOST:PORT"
[ -z "$portal2" ] || [ -z "$container" ] || die "--multipath and --container exclude each other"
for n in "$read_loop" "$lun" "$hotplug_lun" "$rw_kib" "$timeout" "$disk_wait" "$mem" "$smp"; do
    [[ "$n" =~ ^[0-9]+$ ]] || die "--lun, --hotplug-lun, --rw-kib, --timeout, --disk-wait, --mem and --smp take numbers, not '$n'"
done
[ -z "$chap_user" ] || [ -n "$chap_secret" ] || die "--chap-user needs --chap-secret"
[ -z "$chap_in_user" ] || { [ -n "$chap_in_secret" ] && [ -n "$chap_user" ]; } ||
    die "--chap-in-user needs --chap-in-secret and --chap-user"
for d in "$hdig" "$ddig"; do
    case "$d" in None | CRC32C | CRC32C,None | None,CRC32C) ;; *) die "digest must be None, CRC32C or CRC32C,None" ;; esac
done

t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
deadline=$((SECONDS + timeout))

if [ -z "$logs" ]; then
    logs=$(mktemp -d "${TMPDIR:-/tmp}/vmi-run.XXXXXX")
else
    mkdir -p "$logs"
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/vmi-scratch.XXXXXX")
qemu_pid=""
# wait_gone SECS: waits until QEMU has exited, at most SECS seconds.
wait_gone() {
    local until=$((SECONDS + $1))
    while [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null && [ "$SECONDS" -lt "$until" ]; do
        sleep 0.1
    done
}
stop_qemu() {
    [ -n "$qemu_pid" ] || return 0
    kill "$qemu_pid" 2>/dev/null || true
    wait_gone 5
    kill -0 "$qemu_pid" 2>/dev/null && kill -9 "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
}
cleanup() {
    stop_qemu
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the guest ----------------------------------------------------------------------------------
guest=$(bash "$here/build-guest.sh" --quiet) || die "build-guest.sh failed"

# --- expected values, computed before the guest can change the image ----------------------------
if [ -n "$image" ]; then
    exp_size=$(stat -L -c %s "$image")
    exp_1m=$(head -c 1048576 "$image" | md5sum | cut -d' ' -f1)
fi
exp_full_md5=""
[ "$restart_read" = 1 ] && exp_full_md5=$(md5sum < "$image" | cut -d' ' -f1)
# --full-md5 compares 8 MiB chunks: reading a chunk into guest memory and hashing it afterwards
# is several times faster under TCG than piping dd into md5sum (the busy guest CPU lets slirp's
# receive window close, and the host's TCP then backs off), and a mismatch names its chunk.
: > "$scratch/chunks"
if [ "$full_md5" = 1 ]; then
    chunks=$(((exp_size + (8 << 20) - 1) / (8 << 20)))
    for ((i = 0; i < chunks; i++)); do
        echo "$i $(dd if="$image" bs=1M skip=$((i * 8)) count=8 2>/dev/null | md5sum | cut -d' ' -f1)"
    done > "$scratch/chunks"
fi
if [ -z "$fs" ] && [ -n "$image" ]; then
    fs=none
    [ "$(od -An -tx1 -j1080 -N2 "$image" | tr -d ' \n')" = "53ef" ] && fs=ext4
fi
[ -n "$fs" ] || fs=auto
# hash_tree IMAGE DIR FILES: unpacks the ext4 IMAGE into DIR (debugfs rdump), appends "md5  path"
# of its regular files up to 4 MiB (the first 64) to FILES and prints the md5 of the sorted list
# of all its regular files.
hash_tree() {
    mkdir "$2"
    debugfs -R "rdump / $2" "$1" > /dev/null 2>&1 || die "debugfs rdump failed on $1"
    (cd "$2" && find . -type f -size -4097k | sort | sed -n 1,64p | while read -r f; do
        echo "$(md5sum < "$f" | cut -d' ' -f1)  ${f#./}"
    done) >> "$3"
    (cd "$2" && find . -type f | sort | md5sum | cut -d' ' -f1)
}
list_md5=""
: > "$scratch/files"
if [ "$fs" = ext4 ] && [ -n "$image" ]; then
    if [ -n "$files" ]; then
        IFS=, read -r -a want <<< "$files"
        for p in "${want[@]}"; do
            p=${p#/}
            debugfs -R "dump /$p $scratch/f" "$image" > /dev/null 2>&1 && [ -f "$scratch/f" ] ||
                die "--files: /$p is not in $image"
            echo "$(md5sum < "$scratch/f" | cut -d' ' -f1)  $p" >> "$scratch/files"
            rm -f "$scratch/f"
        done
    elif [ "$exp_size" -le $((512 << 20)) ]; then
        list_md5=$(hash_tree "$image" "$scratch/tree" "$scratch/files")
    fi
fi
# --hotplug: what the guest must find on the added LUN, hashed like --image's files, and the md5
# of the marker that tells it apart from the --lun disk.
hp_list_md5="" hp_marker_md5=""
: > "$scratch/hotplug.files"
if [ -n "$hotplug" ]; then
    [ -r "$hotplug" ] && [ "$(od -An -tx1 -j1080 -N2 "$hotplug" | tr -d ' \n')" = "53ef" ] ||
        die "--hotplug needs a readable ext4 image, not $hotplug"
    [ "$hotplug_lun" != "$lun" ] || die "--hotplug-lun must differ from --lun"
    hp_list_md5=$(hash_tree "$hotplug" "$scratch/hptree" "$scratch/hotplug.files")
    hotplug_marker=${hotplug_marker#/}
    [ -f "$scratch/hptree/$hotplug_marker" ] || die "--hotplug-marker: /$hotplug_marker is not in $hotplug"
    hp_marker_md5=$(md5sum < "$scratch/hptree/$hotplug_marker" | cut -d' ' -f1)
    # A marker the --lun disk holds too would not prove which disk the guest mounted.
    if [ "$fs" = ext4 ] && [ -n "$image" ] &&
        debugfs -R "dump /$hotplug_marker $scratch/marker0" "$image" > /dev/null 2>&1 && [ -f "$scratch/marker0" ] &&
        [ "$(md5sum < "$scratch/marker0" | cut -d' ' -f1)" = "$hp_marker_md5" ]; then
        die "--hotplug-marker: /$hotplug_marker is the same in $image and $hotplug"
    fi
fi
if [ "$rw" = 1 ] && [ "$fs" = none ]; then echo "run.sh: warning: --rw needs ext4; skipping it" >&2; fi

# --- the per-run archive: /init plus parameters, appended to the cached base initramfs ----------
host=${portal%:*}
port=${portal##*:}
# guest_host HOST: how the guest reaches HOST (this host's loopback is 10.0.2.2 for it).
guest_host() { case "$1" in 127.* | localhost | 0.0.0.0) echo 10.0.2.2 ;; *) echo "$1" ;; esac; }
ghost=$(guest_host "$host")
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
mkdir -p "$scratch/run/etc"
cp "$here/guest-init.sh" "$scratch/run/init"
chmod 755 "$scratch/run/init"
cp "$scratch/files" "$scratch/run/etc/vmi.files"
cp "$scratch/chunks" "$scratch/run/etc/vmi.chunks"
cp "$scratch/hotplug.files" "$scratch/run/etc/vmi.hotplug.files"
{
    echo "PORTAL_HOST=$(sq "$ghost")"
    echo "PORTAL_PORT=$(sq "$port")"
    echo "IQN=$(sq "$iqn")"
    echo "LUN=$(sq "$lun")"
    echo "CHAP_USER=$(sq "$chap_user")"
    echo "CHAP_SECRET=$(sq "$chap_secret")"
    echo "CHAP_IN_USER=$(sq "$chap_in_user")"
    echo "CHAP_IN_SECRET=$(sq "$chap_in_secret")"
    echo "RESTART_READ=$restart_read"
    echo "READ_LOOP=$read_loop"
    echo "ISCSI_RECV=$iscsi_recv"
    echo "EXP_FULL_MD5=$exp_full_md5"
    echo "HEADER_DIGEST=$(sq "$hdig")"
    echo "DATA_DIGEST=$(sq "$ddig")"
    echo "EXP_SIZE=$exp_size"
    echo "EXP_1M=$exp_1m"
    echo "EXP_LIST_MD5=$list_md5"
    echo "FS=$fs"
    echo "RW=$rw"
    echo "RAW_WRITE=$raw_write"
    echo "RW_KIB=$(sq "$rw_kib")"
    echo "SCSI_LOG=$scsi_log"
    echo "DISK_WAIT=$(sq "$disk_wait")"
    echo "HOTPLUG=$([ -n "$hotplug" ] && echo 1 || echo 0)"
    echo "HOTPLUG_LUN=$hotplug_lun"
    echo "HOTPLUG_MARKER=$(sq "$hotplug_marker")"
    echo "HOTPLUG_MARKER_MD5=$hp_marker_md5"
    echo "HOTPLUG_LIST_MD5=$hp_list_md5"
    echo "INITIATOR_NAME='iqn.2026-11.test.vm-initiator:guest'"
    if [ -n "$portal2" ]; then
        echo "MULTIPATH=1"
        echo "PORTAL2=$(sq "$(guest_host "${portal2%:*}"):${portal2##*:}")"
    fi
} > "$scratch/run/etc/vmi.conf"
if [ -n "$container" ]; then
    echo "CONTAINER=1" >> "$scratch/run/etc/vmi.conf"
    cat "$container" >> "$scratch/run/etc/vmi.conf"
    # The binary without its debug info, and the shared libraries it needs (the host's, which
    # the guest's open-iscsi already uses), under the paths the loader searches.
    mkdir -p "$scratch/run/usr/local/bin"
    strip -o "$scratch/run/usr/local/bin/overlaybd-target" "$bin" 2>/dev/null ||
        cp "$bin" "$scratch/run/usr/local/bin/overlaybd-target"
    ldd "$bin" | while read -r a b2 c _; do
        if [ "$b2" = "=>" ]; then lib=$c; else lib=$a; fi
        case "$lib" in /*) ;; *) continue ;; esac
        mkdir -p "$scratch/run$(dirname "$lib")"
        cp -L "$lib" "$scratch/run$lib"
    done
fi
(cd "$scratch/run" && find . | cpio -o -H newc -R 0:0 --quiet) > "$scratch/run.cpio"
# The kernel looks for the next archive only at 4-byte aligned offsets, and skips zero padding.
base_size=$(stat -c %s "$guest/initramfs.cpio")
{
    cat "$guest/initramfs.cpio"
    head -c $(((4 - base_size % 4) % 4)) /dev/zero
    cat "$scratch/run.cpio"
} > "$scratch/initrd"

# --- boot ---------------------------------------------------------------------------------------
# boot ACCEL: runs the guest until it reports "VMI: done", exits, or the deadline passes.
# Returns 3 when a KVM attempt should be retried with TCG (QEMU failed or the guest never came up).
boot() {
    local a=$1 cpu kernel=$guest/vmlinuz
    case "$a" in kvm) cpu=host ;; *) cpu=max ;; esac
    # Under TCG the uncompressed kernel (PVH entry) skips seconds of bzImage decompression.
    [ "$a" = tcg ] && [ -f "$guest/vmlinux" ] && kernel=$guest/vmlinux
    : > "$logs/console.log"
    : > "$logs/results.log"
    local net=(-netdev "user,id=n0")
    [ -z "$tap" ] || net=(-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no")
    [ -z "$pcap" ] || net+=(-object "filter-dump,id=f0,netdev=n0,file=$pcap,maxlen=256")
    qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
        -accel "$a" -cpu "$cpu" -m "$mem" -smp "$smp" \
        -kernel "$kernel" -initrd "$scratch/initrd" \
        -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off" \
        -serial "file:$logs/console.log" -serial "file:$logs/results.log" \
        "${net[@]}" -device virtio-net-pci,netdev=n0 \
        > "$logs/qemu-$a.log" 2>&1 &
    qemu_pid=$!
    # Not a job of ours any more: bash would print "Aborted" when a KVM attempt dies; it still
    # reaps the process, so `kill -0` below sees it go.
    disown "$qemu_pid"
    local up_by=$((SECONDS + 25)) fired=() i
    while kill -0 "$qemu_pid" 2>/dev/null; do
        grep -q '^VMI: done' "$logs/results.log" && break
        # Each hook fires once, when its mark shows up on the guest's result port.
        for i in "${!on_marks[@]}"; do
            [ -z "${fired[i]:-}" ] || continue
            tr -d '\r' < "$logs/results.log" | grep -qx "VMI: ${on_marks[i]}" || continue
            fired[i]=1
            { rc=0; bash -c "${on_cmds[i]}" || rc=$?; echo "run.sh: hook exit $rc"; } > "$logs/on-${on_marks[i]}.log" 2>&1 &
        done
        if [ "$a" = kvm ] && [ "$SECONDS" -ge "$up_by" ] && ! grep -q '^VMI: guest up' "$logs/results.log"; then
            echo "run.sh: KVM guest not up in 25 s; falling back to TCG" >&2
            stop_qemu
            return 3
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "run.sh: timeout after ${timeout}s; killing QEMU" >&2
            stop_qemu
            return 1
        fi
        sleep 0.2
    done
    # After "VMI: done" the guest powers off at once; give QEMU a moment, then stop it.
    wait_gone 5
    stop_qemu
    if [ "$a" = kvm ] && ! grep -q '^VMI: guest up' "$logs/results.log"; then
        echo "run.sh: QEMU with KVM failed ($(tail -1 "$logs/qemu-$a.log")); falling back to TCG" >&2
        return 3
    fi
    return 0
}

if [ "$accel" = auto ]; then
    if [ -e /sys/module/kvm_pvm ] && [ -z "${VMI_TRY_KVM_ON_PVM:-}" ]; then
        accel=tcg # stock kernels do not boot under the nested PVM hypervisor
    elif [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        accel=kvm-then-tcg
    else
        accel=tcg
    fi
fi
t_vm=$(date +%s.%N)
used=tcg
case "$accel" in
    kvm-then-tcg)
        used=kvm
        boot kvm || { [ $? = 3 ] && used=tcg && boot tcg; } || true ;;
    kvm) used=kvm; boot kvm || true ;;
    tcg) boot tcg || true ;;
    *) die "--accel must be auto, tcg or kvm" ;;
esac
wait # for the hooks still running
vm_secs=$(awk -v a="$t_vm" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
qemu_pid=""

# --- host-side checks and the verdict -----------------------------------------------------------
for m in "${on_marks[@]}"; do
    if [ -f "$logs/on-$m.log" ]; then
        echo "run.sh: hook $m: $(grep -v '^run.sh: hook exit' "$logs/on-$m.log" | tail -1) ($(tail -1 "$logs/on-$m.log" | cut -d' ' -f2-))"
    else
        echo "run.sh: hook $m: not fired (the guest never printed VMI: $m)"
    fi
done
tr -d '\r' < "$logs/results.log" > "$scratch/results"
sed -n 's/^SESSION //p' "$logs/console.log" | tr -d '\r' > "$logs/session.txt"
[ "$scsi_log" = 1 ] && sed -n 's/^SCSI //p' "$logs/console.log" | tr -d '\r' > "$logs/scsi.log"

# With --fs auto the guest decides from the disk's superblock magic and says so.
efs=$fs
if [ "$fs" = auto ]; then
    efs=none
    grep -q '^INFO fs ext4' "$scratch/results" && efs=ext4
fi

if [ "$rw" = 1 ] && [ "$efs" = ext4 ] && [ "$host_verify" = 1 ]; then
    t0=$(date +%s.%N)
    n=0 bad=0
    while read -r _ _ path sum; do
        n=$((n + 1))
        rm -f "$scratch/w"
        debugfs -R "dump /$path $scratch/w" "$image" > /dev/null 2>&1 || true
        got=$( [ -f "$scratch/w" ] && md5sum < "$scratch/w" | cut -d' ' -f1 || echo missing)
        [ "$got" = "$sum" ] || { bad=$((bad + 1)); echo "run.sh: /$path in the image: $got, guest wrote $sum" >&2; }
    done < <(grep '^INFO written ' "$scratch/results" || true)
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    if [ "$n" -gt 0 ] && [ "$bad" = 0 ]; then
        echo "RESULT rw_host_verify PASS ${dt}s $n written files found in the image" >> "$scratch/results"
    else
        echo "RESULT rw_host_verify FAIL ${dt}s $n files reported, $bad differ in the image" >> "$scratch/results"
    fi
fi

# --multipath: the region the guest wrote last (INFO mp_final MIB-OFFSET MIBS MD5) must be in the
# image: the target wrote what the guest read back through either path.
if [ -n "$portal2" ] && [ -n "$image" ]; then
    t0=$(date +%s.%N)
    read -r _ _ at mibs want < <(grep '^INFO mp_final ' "$scratch/results" | tail -1) || true
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    if [[ "${at:-}" =~ ^[0-9]+$ ]] && [[ "${mibs:-}" =~ ^[0-9]+$ ]] && [ -n "${want:-}" ]; then
        got=$(dd if="$image" bs=1M skip="$at" count="$mibs" 2>/dev/null | md5sum | cut -d' ' -f1)
        if [ "$got" = "$want" ]; then
            echo "RESULT mp_host_verify PASS ${dt}s MiB $at..$((at + mibs - 1)) of the image: md5 $got, as the guest wrote last" >> "$scratch/results"
        else
            echo "RESULT mp_host_verify FAIL ${dt}s MiB $at..$((at + mibs - 1)) of the image: md5 $got, the guest wrote $want" >> "$scratch/results"
        fi
    else
        echo "RESULT mp_host_verify FAIL ${dt}s the guest reported no final region (INFO mp_final)" >> "$scratch/results"
    fi
fi

if [ -n "$portal2" ]; then
    expected=(boot iscsid mp_discovery mp_login mp_map mp_io mp_cut mp_restore mp_logout)
    [ -n "$image" ] && expected+=(mp_host_verify)
elif [ -n "$container" ]; then
    expected=(boot iscsid container_target container_run container_reattach container_wwn container_rw
        container_blackout container_fail container_detach)
else
    expected=(boot iscsid discovery login login_disk session_params size first_mib)
    [ "$raw_write" = 1 ] && expected+=(raw_write raw_restore)
    [ "$full_md5" = 1 ] && expected+=(md5_full)
    [ "$restart_read" = 1 ] && expected+=(restart_read)
    [ "$read_loop" -gt 0 ] && expected+=(read_loop)
    [ "$efs" = ext4 ] && expected+=(ext4_ro_mount ext4_files)
    if [ "$rw" = 1 ] && [ "$efs" = ext4 ]; then
        expected+=(rw_write rw_logout relogin relogin_disk rw_readback)
        [ "$host_verify" = 1 ] && expected+=(rw_host_verify)
    fi
    [ -n "$hotplug" ] && expected+=(hotplug_add hotplug_remove)
    expected+=(logout)
fi
[ "$scsi_log" = 1 ] && expected+=(scsi_log)

pass=0 fail=0
grep '^RESULT ' "$scratch/results" > "$scratch/lines" || true
while read -r _ c s rest; do
    echo "RESULT $c $s $rest"
    if [ "$s" = PASS ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done < "$scratch/lines"
for c in "${expected[@]}"; do
    if ! grep -q "^RESULT $c " "$scratch/lines"; then
        echo "RESULT $c FAIL - not reached"
        fail=$((fail + 1))
    fi
done
grep '^INFO ' "$scratch/results" | sed 's/^/  /' || true
echo "run.sh: accel $used, VM ${vm_secs}s, total $(elapsed)s, logs in $logs"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
