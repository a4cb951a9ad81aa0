#!/usr/bin/env bash
# Checks the VM harness itself against tgtd, a known-good target: every case run.sh offers must pass,
# and runs that ought to fail (wrong CHAP secret, digests refused, wrong IQN, missing LUN, an image
# that is not the target's, nothing listening) must fail.
# Starts its own tgtd on a private control port and a random loopback portal; needs root for tgtd.
# Usage: selftest-tgt.sh [--quick] [--net auto|tap|user]
#   --quick   only the read-only and read-write cases
#   --net     the guest's network (net.sh; default auto: tap in a network namespace of its own)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
quick=0 net=auto
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --net) net=$2; shift ;;
        *) echo "selftest-tgt.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

command -v tgtd >/dev/null || {
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq tgt >/dev/null
}

bash "$here/build-guest.sh" --quiet > /dev/null || { echo "selftest-tgt.sh: build-guest.sh failed" >&2; exit 1; }
# shellcheck source=net.sh
. "$here/net.sh"
vmi_net "$net" "" "$0" "${args[@]}" || exit 2
addr=$vmi_addr

work=$(mktemp -d "${TMPDIR:-/tmp}/vmi-selftest.XXXXXX")
port=$((20000 + RANDOM % 40000))
ctl=$((1000 + RANDOM % 9000))
iqn=iqn.2026-11.test:vm
tgtd_pid=""
tgtadm() { command tgtadm -C "$ctl" --lld iscsi "$@"; }

cleanup() {
    if [ -n "$tgtd_pid" ]; then
        # tgtd ignores SIGTERM while a target exists: delete it, then the system.
        tgtadm --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
        command tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
        for _ in $(seq 30); do kill -0 "$tgtd_pid" 2>/dev/null || break; sleep 0.1; done
        kill "$tgtd_pid" 2>/dev/null || true
        wait "$tgtd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$here/make-test-image.sh" "$work/disk.img" 32M
# Same size and file names, other content and UUID: the data checks must notice.
bash "$here/make-test-image.sh" "$work/other.img" 32M

tgtd -f -C "$ctl" --iscsi "portal=$addr:$port" > "$work/tgtd.log" 2>&1 &
tgtd_pid=$!
up_by=$((SECONDS + 10))
until tgtadm --op show --mode target >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$up_by" ] || { cat "$work/tgtd.log" >&2; echo "tgtd did not start" >&2; exit 1; }
    sleep 0.2
done
tgtadm --op new --mode target --tid 1 -T "$iqn"
tgtadm --op new --mode logicalunit --tid 1 --lun 1 -b "$work/disk.img"
tgtadm --op bind --mode target --tid 1 -I ALL

pass=0 fail=0
# case NAME EXPECT [run.sh arguments...]: EXPECT is "pass", or "fail:CASE" when the run must fail
# and CASE must be the first check that fails (so it fails for the intended reason).
case_() {
    local name=$1 expect=$2 rc=0 t0 dt first
    shift 2
    t0=$(date +%s.%N)
    bash "$here/run.sh" --portal "$addr:$port" --iqn "$iqn" --image "$work/disk.img" \
        --logs "$work/logs-$name" --timeout 240 "${vmi_run_args[@]}" "$@" > "$work/$name.out" 2>&1 || rc=$?
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    local got=pass
    if [ "$rc" != 0 ]; then
        first=$(awk '$1 == "RESULT" && $3 == "FAIL" { print $2; exit }' "$work/$name.out")
        got=fail:${first:-none}
    fi
    if [ "$got" = "$expect" ]; then
        pass=$((pass + 1))
        echo "selftest: $name: ok (expected $expect) in ${dt}s"
    else
        fail=$((fail + 1))
        echo "selftest: $name: WRONG (expected $expect, got $got) in ${dt}s"
        cat "$work/$name.out"
    fi
    grep '^RESULT \|^run.sh:' "$work/$name.out" | sed 's/^/    /'
}

case_ ro pass --lun 1 --scsi-log
case_ rw pass --lun 1 --rw --raw-write --scsi-log
if [ "$quick" = 0 ]; then
    tgtadm --op new --mode account --user vmuser --password vmsecret12345
    tgtadm --op bind --mode account --tid 1 --user vmuser
    case_ chap pass --lun 1 --chap-user vmuser --chap-secret vmsecret12345
    case_ chap_wrong_secret fail:login --lun 1 --chap-user vmuser --chap-secret not-the-secret
    tgtadm --op unbind --mode account --tid 1 --user vmuser

    # tgt answers None to a CRC32C-only offer by default, which the initiator must refuse.
    case_ digests_refused fail:login --lun 1 --digests on
    tgtadm --op update --mode target --tid 1 --name HeaderDigest --value CRC32C,None
    tgtadm --op update --mode target --tid 1 --name DataDigest --value CRC32C,None
    case_ digests pass --lun 1 --digests on --rw --full-md5 --scsi-log
    case_ wrong_iqn fail:discovery --lun 1 --iqn iqn.2026-11.test:nosuch
    case_ missing_lun fail:login_disk --lun 5 --disk-wait 5
    case_ wrong_image fail:first_mib --lun 1 --image "$work/other.img"
    case_ no_listener fail:discovery --lun 1 --portal "$addr:$((port == 60000 ? 20001 : port + 1))"
fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
