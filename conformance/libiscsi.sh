#!/usr/bin/env bash
# libiscsi conformance: runs `iscsi-test-cu --dataloss -t ALL` against our target and against
# tgtd, each on a scratch 1 GiB file LUN, and prints both tallies side by side.
#
# Our target also exports a read-only LUN, which the ReadOnly suite is run against separately.
# Exits non-zero when our target has any FAILED test or a run ends without a summary (ERROR).
# tgtd is optional: without it (or with OBD_SKIP_TGT=1) only our column is printed.
#
# Environment: OBD_TEST_FILTER (default ALL), OBD_RUN_TIMEOUT seconds per run (default 600),
# OBD_KEEP=1 keeps the work directory with the raw logs.
set -euo pipefail
cd "$(dirname "$0")/.."
script_name=libiscsi.sh
# shellcheck source=conformance/targets.sh
. conformance/targets.sh

filter=${OBD_TEST_FILTER:-ALL}
run_timeout=${OBD_RUN_TIMEOUT:-600}
iqn_ours=iqn.2026-11.io.overlaybd:conformance
iqn_tgt=iqn.2026-11.org.tgt:conformance
ini1=iqn.2026-11.io.overlaybd:initiator1
ini2=iqn.2026-11.io.overlaybd:initiator2

for tool in iscsi-test-cu truncate; do
    command -v "$tool" >/dev/null || { echo "libiscsi.sh: $tool is not installed" >&2; exit 2; }
done

work=$(mktemp -d /tmp/obd-libiscsi.XXXXXX)
ours_pid=""
tgt_pid=""
tgt_ctrl=""

cleanup() {
    set +e
    stop_targets "$ours_pid" "$tgt_pid" "$tgt_ctrl"
    drop_work "$work" logs
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs iscsi-test-cu; the output goes to $1.
run_suite() {
    local out=$1 url=$2 tests=$3
    timeout "$run_timeout" iscsi-test-cu --dataloss -i "$ini1" -I "$ini2" -t "$tests" "$url" \
        >"$out" 2>&1 || true
}

# Classifies every test of a run: "SUITE.TEST pass|fail|skip|notimpl [why]", where why is the
# test's first [SKIPPED] line for skips.
classify() {
    awk '
        function finish(result) {
            if (name == "") return
            if (result == "pass" && notimpl) result = "notimpl"
            else if (result == "pass" && skipped) result = "skip"
            if (result == "skip" || result == "notimpl") print name, result, why
            else print name, result
            name = ""
        }
        {
            if ($0 ~ /^Suite: /) suite = $2
            if ($0 ~ /^  Test: /) { name = suite "." $2; skipped = 0; notimpl = 0; why = "" }
            if ($0 ~ /\[SKIPPED\]/) {
                if ($0 ~ /not implemented/) notimpl = 1; else skipped = 1
                if (why == "") { why = $0; sub(/^.*\[SKIPPED\][ \t]*/, "", why) }
            }
            if ($0 ~ /FAILED$/) finish("fail")
            else if ($0 ~ /passed$/ || $0 ~ /^passed/ || $0 ~ /\.\.\.passed/) finish("pass")
        }
    ' "$1"
}

# "pass fail skip notimpl total error" for a run.
tally() {
    local results=$1 log=$2 error=0
    grep -q "^Run Summary" "$log" || error=1
    awk -v error="$error" '
        { n[$2]++; total++ }
        END { printf "%d %d %d %d %d %d\n", n["pass"], n["fail"], n["skip"], n["notimpl"], total, error }
    ' "$results"
}

echo "== building the release binary"
cargo build --release --bin overlaybd-target >/dev/null 2>&1 ||
    { cargo build --release --bin overlaybd-target; exit 2; }

echo "== our target"
truncate -s 1G "$work/ours.img"
truncate -s 64M "$work/ours-ro.img"
port_ours=$(free_port)
# Target resets are refused by default; libiscsi's PreventAllow, Reserve6 and TMF tests send
# TARGET WARM/COLD RESET and expect them to work (tgtd honours them too).
"$(bash scripts/target-dir.sh)/release/overlaybd-target" --portal "127.0.0.1:$port_ours" --target "$iqn_ours" \
    --lun "file:$work/ours.img" --lun "ro:file:$work/ours-ro.img" --log-level warn \
    --allow-target-reset \
    >"$work/ours-server.log" 2>&1 &
ours_pid=$!
wait_port "$port_ours"
run_suite "$work/ours-all.log" "iscsi://127.0.0.1:$port_ours/$iqn_ours/0" "$filter"
run_suite "$work/ours-ro.log" "iscsi://127.0.0.1:$port_ours/$iqn_ours/1" "ALL.ReadOnly"
classify "$work/ours-all.log" >"$work/ours.results"
classify "$work/ours-ro.log" | awk '{ print $1 "@read-only-LUN", $2 }' >>"$work/ours.results"
kill "$ours_pid" 2>/dev/null || true
wait "$ours_pid" 2>/dev/null || true
ours_pid=""

tgt_ran=0
if [ "${OBD_SKIP_TGT:-0}" != 1 ] && command -v tgtd >/dev/null && command -v tgtadm >/dev/null; then
    echo "== tgtd"
    truncate -s 1G "$work/tgt.img"
    port_tgt=$(free_port)
    tgt_ctrl=$((100 + RANDOM % 800))
    tgtd -f -C "$tgt_ctrl" --iscsi "portal=127.0.0.1:$port_tgt" >"$work/tgt-server.log" 2>&1 &
    tgt_pid=$!
    if wait_port "$port_tgt"; then
        tgtadm -C "$tgt_ctrl" --lld iscsi --op new --mode target --tid 1 -T "$iqn_tgt"
        tgtadm -C "$tgt_ctrl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/tgt.img"
        tgtadm -C "$tgt_ctrl" --lld iscsi --op bind --mode target --tid 1 -I ALL
        # tgt puts its controller on LUN 0 and the disk on LUN 1.
        run_suite "$work/tgt-all.log" "iscsi://127.0.0.1:$port_tgt/$iqn_tgt/1" "$filter"
        classify "$work/tgt-all.log" >"$work/tgt.results"
        tgt_ran=1
    fi
fi

read -r o_pass o_fail o_skip o_ni o_total o_err < <(tally "$work/ours.results" "$work/ours-all.log")
grep -q "^Run Summary" "$work/ours-ro.log" || o_err=1
echo
printf "%-22s %12s %12s\n" "libiscsi $filter" "ours" "tgtd"
if [ "$tgt_ran" = 1 ]; then
    read -r t_pass t_fail t_skip t_ni t_total t_err < <(tally "$work/tgt.results" "$work/tgt-all.log")
else
    t_pass=- t_fail=- t_skip=- t_ni=- t_total=- t_err=-
fi
printf "%-22s %12s %12s\n" "tests" "$o_total" "$t_total"
printf "%-22s %12s %12s\n" "passed" "$o_pass" "$t_pass"
printf "%-22s %12s %12s\n" "FAILED" "$o_fail" "$t_fail"
printf "%-22s %12s %12s\n" "skipped" "$o_skip" "$t_skip"
printf "%-22s %12s %12s\n" "not implemented" "$o_ni" "$t_ni"
printf "%-22s %12s %12s\n" "ERROR (no summary)" "$o_err" "$t_err"
echo
if [ "$o_fail" -gt 0 ]; then
    echo "Our failures:"
    awk '$2 == "fail" { print "  " $1 }' "$work/ours.results"
fi
echo "Our skipped and not-implemented tests (first reason libiscsi gives):"
awk '$2 == "skip" || $2 == "notimpl" { name = $1; kind = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); print "  " name " [" kind "] " $0 }' "$work/ours.results"
if [ "$tgt_ran" = 1 ]; then
    echo "tgtd failures:"
    awk '$2 == "fail" { print "  " $1 }' "$work/tgt.results"
fi

if [ "$o_fail" -gt 0 ] || [ "$o_err" -gt 0 ]; then
    exit 1
fi
