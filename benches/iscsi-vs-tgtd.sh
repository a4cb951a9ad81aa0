#!/usr/bin/env bash
# Network benchmark: our target against tgtd on the same 1 GiB file (see benches/README.md).
#
# Builds the release binary and the load generator (benches/loadgen), writes a 1 GiB backing file
# (kept in the page cache), starts both targets, then runs every point ROUNDS times alternating
# ours / tgtd, measuring each target's CPU seconds (/proc/PID/stat utime+stime) around each run.
# Prints medians: ours, tgtd, ratio, and the same per CPU-second of the target process; plus
# the RSS of each target under 16 sessions and one loopback TCP stream for reference.
#
# Environment: ROUNDS (default 3), DURATION measured seconds per run (default 5), POINTS (a
# space-separated subset of the point names below), OBD_KEEP=1 keeps the raw results,
# BENCH_DIR where the backing file lives (default /tmp; e.g. /dev/shm for tmpfs), FILL_BS the
# dd block size that writes it (default 1M; the page cache keeps folios of about that size on
# ext4, which makes later 4 KiB writes far costlier in the kernel, see benches/README.md),
# OURS_BIN another build of our target to measure (e.g. a copy of an older one), AGAINST_BIN a
# build of our target to run in tgtd's place (before/after a change, in one run; the "tgtd"
# columns are then that build).
set -euo pipefail
cd "$(dirname "$0")/.."
script_name=iscsi-vs-tgtd.sh
# shellcheck source=conformance/targets.sh
. conformance/targets.sh
# shellcheck source=benches/common/measure.sh
. benches/common/measure.sh

rounds=${ROUNDS:-3}
duration=${DURATION:-5}
all_points="rr4k_qd1 rr4k_qd32 rr4k_qd32_perf seq64k_qd8 seq1m_qd8 rw4k_qd32 sess1 sess4 sess16"
points=${POINTS:-$all_points}
iqn_ours=iqn.2026-11.io.overlaybd:bench
iqn_tgt=iqn.2026-11.org.tgt:bench

against_bin=${AGAINST_BIN:-}
needed="iscsi-perf python3"
[ -n "$against_bin" ] || needed="$needed tgtd tgtadm"
for tool in $needed; do
    command -v "$tool" >/dev/null || { echo "iscsi-vs-tgtd.sh: $tool is not installed" >&2; exit 2; }
done

cargo build --release --quiet --bin overlaybd-target --example loadgen
release=$(bash scripts/target-dir.sh)/release
ours_bin=${OURS_BIN:-$release/overlaybd-target}
loadgen=$release/examples/loadgen

work=$(mktemp -d "${BENCH_DIR:-/tmp}/obd-bench.XXXXXX")
ours_pid=""
tgt_pid=""
tgt_ctrl=$((100 + RANDOM % 800))  # tgtd accepts small control port numbers only

cleanup() {
    set +e
    stop_targets "$ours_pid" "$tgt_pid" "$tgt_ctrl"
    drop_work "$work" results
}
trap cleanup EXIT
trap 'exit 130' INT TERM

img=$work/lun.img
echo "writing a 1 GiB backing file..." >&2
fill_bs=${FILL_BS:-1M}
fill_count=$((1024 * 1024 * 1024 / $(numfmt --from=iec "$fill_bs")))
dd if=/dev/urandom of="$img" bs="$fill_bs" count="$fill_count" status=none
cat "$img" >/dev/null

port_ours=$(free_port)
"$ours_bin" --portal "127.0.0.1:$port_ours" --target "$iqn_ours" --lun "file:$img" \
    >"$work/ours.log" 2>&1 &
ours_pid=$!
wait_port "$port_ours"

port_tgt=$(free_port)
tgt_lun=1
if [ -n "$against_bin" ]; then
    # The other side is a build of ours: same flags, its LUN 0 is the file.
    "$against_bin" --portal "127.0.0.1:$port_tgt" --target "$iqn_tgt" --lun "file:$img" \
        >"$work/against.log" 2>&1 &
    tgt_pid=$!
    tgt_lun=0
    wait_port "$port_tgt"
else
    start_tgtd "$port_tgt" "$tgt_ctrl" "$iqn_tgt" "$img" "$work/tgtd.log"
fi

# One run of point $1 against side $2 (ours|tgtd); appends a result line to $work/results.
run_point() {
    local point=$1 side=$2 port iqn lun pid
    if [ "$side" = ours ]; then
        port=$port_ours iqn=$iqn_ours lun=0 pid=$ours_pid
    else
        port=$port_tgt iqn=$iqn_tgt lun=$tgt_lun pid=$tgt_pid
    fi
    local lg=("$loadgen" --portal "127.0.0.1:$port" --target "$iqn" --lun "$lun"
        --duration "$duration" --warmup 1)
    local url="iscsi://127.0.0.1:$port/$iqn/$lun"
    if [ "$point" = rr4k_qd32_perf ]; then
        measured_run "$point" "$side" "$pid" "$work/results" \
            iscsi-perf -m 32 -b 8 -r -t "$duration" "$url"
    else
        local args
        read -ra args <<<"$(point_args "$point")"
        [ "${#args[@]}" -gt 0 ] || exit 2
        measured_run "$point" "$side" "$pid" "$work/results" "${lg[@]}" "${args[@]}"
    fi
}

for round in $(seq "$rounds"); do
    echo "round $round/$rounds" >&2
    for point in $points; do
        # Alternate which side goes first so drift hurts both alike.
        if [ $((round % 2)) = 1 ]; then
            run_point "$point" ours
            run_point "$point" tgtd
        else
            run_point "$point" tgtd
            run_point "$point" ours
        fi
    done
    # One loopback TCP stream, the ceiling for one connection, measured in every round too.
    "$loadgen" --tcp-baseline --duration "$duration" | sed -n 's/mibs=//p' >>"$work/tcp"
done
tcp_lg=$(sort -n "$work/tcp" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
tcp_iperf=NA
if command -v iperf3 >/dev/null; then
    ip_port=$(free_port)
    iperf3 -s -1 -p "$ip_port" >/dev/null 2>&1 &
    ip_pid=$!
    sleep 0.5
    tcp_iperf=$(iperf3 -c 127.0.0.1 -p "$ip_port" -t 3 -f M 2>/dev/null |
        awk '/receiver/ { print $7 }' | tail -1)
    wait "$ip_pid" 2>/dev/null || true
fi

echo
if [ -n "$against_bin" ]; then
    other="$against_bin"
else
    other="tgtd $(tgtd --version 2>/dev/null | head -1)"
fi
echo "overlaybd-target ($ours_bin) vs $other, $(date -u +%F) on $(nproc) vCPU" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), medians of $rounds rounds x ${duration}s"
python3 - "$work/results" "$tcp_lg" "$tcp_iperf" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def num(s):
    try:
        return float(s)
    except ValueError:
        return None
data = {}
order = []
for point, side, iops, mibs, p99, c0, c1, t0, t1, rss in rows:
    if point not in order:
        order.append(point)
    d = data.setdefault((point, side), {"iops": [], "mibs": [], "p99": [], "percpu": [], "rss": []})
    i, c, w = num(iops), num(c1) - num(c0), num(t1) - num(t0)
    d["iops"].append(i); d["mibs"].append(num(mibs)); d["p99"].append(num(p99))
    d["rss"].append(num(rss) / 1024 if num(rss) else None)
    # IOPS per CPU-second: IOPS divided by the cores the target kept busy meanwhile.
    d["percpu"].append(i / (c / w) if i and c > 0 else None)
def fmt(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}"
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"
print(f"{'point':15} {'IOPS ours':>10} {'tgtd':>10} {'ratio':>6} {'MiB/s ours':>10} {'tgtd':>8}"
      f" {'IOPS/CPU-s ours':>15} {'tgtd':>9} {'ratio':>6} {'p99us ours':>10} {'tgtd':>8} {'RSS MiB o/t':>12}")
for p in order:
    o, t = data.get((p, "ours"), {}), data.get((p, "tgtd"), {})
    m = lambda d, k: med(d.get(k, []))
    rss = f"{fmt(m(o,'rss'))}/{fmt(m(t,'rss'))}"
    print(f"{p:15} {fmt(m(o,'iops')):>10} {fmt(m(t,'iops')):>10} {ratio(m(o,'iops'), m(t,'iops')):>6}"
          f" {fmt(m(o,'mibs'),1):>10} {fmt(m(t,'mibs'),1):>8}"
          f" {fmt(m(o,'percpu')):>15} {fmt(m(t,'percpu')):>9} {ratio(m(o,'percpu'), m(t,'percpu')):>6}"
          f" {fmt(m(o,'p99'),0):>10} {fmt(m(t,'p99'),0):>8} {rss:>12}")
print(f"one loopback TCP stream: {sys.argv[2]} MiB/s (median per round; blocking read/write, 1 MiB buffers);"
      f" iperf3 once: {sys.argv[3]} MiB/s")
EOF
