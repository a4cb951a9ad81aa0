#!/usr/bin/env bash
# Runs the VM checks against a target binary that this script starts itself, on a scratch ext4 image:
#     BIN --portal ADDR:PORT --target IQN --lun file:IMAGE   (ADDR: see --net)
# (the command line of overlaybd-target). Runs a read-only pass, then a read-write pass with raw
# writes, whole-disk hashes and the SCSI command log, then digests offered as "CRC32C,None".
#
# Usage: check-target.sh [--bin PATH] [--lun N] [--strict-digests] [--quick] [--net auto|tap|user]
#                        [-- run.sh options...]
#   --bin PATH         the target binary (default: overlaybd-target in cargo's release folder)
#   --lun N            the LUN the image appears on (default 0)
#   --strict-digests   also require CRC32C header and data digests (offer CRC32C only)
#   --quick            only the read-only pass
#   --net MODE         the guest's network (net.sh): tap in a network namespace of its own when
#                      possible (auto, the default), or QEMU's user-mode network
# Extra options after `--` go to every run.sh call (e.g. --chap-user U --chap-secret S).
# Logs: $VMI_LOGS/<pass>/ (default: a new directory under ${TMPDIR:-/tmp}, printed at the end).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin="$(bash "$repo/scripts/target-dir.sh")/release/overlaybd-target"
lun=0 strict=0 quick=0 net=auto
extra=()
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift ;;
        --lun) lun=$2; shift ;;
        --strict-digests) strict=1 ;;
        --quick) quick=1 ;;
        --net) net=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "check-target.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$bin" ] || { echo "check-target.sh: no target binary at $bin (cargo build --release?)" >&2; exit 2; }
bash "$here/build-guest.sh" --quiet > /dev/null || { echo "check-target.sh: build-guest.sh failed" >&2; exit 1; }
# shellcheck source=net.sh
. "$here/net.sh"
vmi_net "$net" "" "$0" "${args[@]}" || exit 2
addr=$vmi_addr

work=$(mktemp -d "${TMPDIR:-/tmp}/vmi-check.XXXXXX")
logs=${VMI_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/vmi-check-logs.XXXXXX")}
port=$((20000 + RANDOM % 40000))
iqn=iqn.2026-11.test:vm
target_pid=""
cleanup() {
    if [ -n "$target_pid" ] && kill -0 "$target_pid" 2>/dev/null; then
        kill "$target_pid" 2>/dev/null || true
        wait "$target_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$here/make-test-image.sh" "$work/disk.img" 64M

"$bin" --portal "$addr:$port" --target "$iqn" --lun "file:$work/disk.img" > "$work/target.log" 2>&1 &
target_pid=$!
up_by=$((SECONDS + 20))
until (exec 3<> "/dev/tcp/$addr/$port") 2>/dev/null; do
    if ! kill -0 "$target_pid" 2>/dev/null || [ "$SECONDS" -ge "$up_by" ]; then
        echo "check-target.sh: the target is not listening on $addr:$port" >&2
        cat "$work/target.log" >&2
        exit 1
    fi
    sleep 0.2
done

pass=0 fail=0
# pass_ NAME run.sh-options...: one run.sh call; its RESULT lines are shown either way.
pass_() {
    local name=$1 rc=0
    shift
    echo "check-target: $name"
    bash "$here/run.sh" --portal "$addr:$port" --iqn "$iqn" --lun "$lun" --image "$work/disk.img" \
        --logs "$logs/$name" "${vmi_run_args[@]}" "$@" ${extra[@]+"${extra[@]}"} || rc=$?
    if [ "$rc" = 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
}

pass_ ro --scsi-log
if [ "$quick" = 0 ]; then
    pass_ rw --rw --raw-write --full-md5 --scsi-log
    pass_ digests_offered --header-digest CRC32C,None --data-digest CRC32C,None
    [ "$strict" = 1 ] && pass_ digests_required --digests on --rw
fi
if ! kill -0 "$target_pid" 2>/dev/null; then
    echo "check-target.sh: the target exited during the runs" >&2
    fail=$((fail + 1))
fi
cp "$work/target.log" "$logs/target.log"
echo "check-target: logs in $logs (target.log: $(wc -l < "$logs/target.log") lines)"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
