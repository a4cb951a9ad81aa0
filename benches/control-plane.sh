#!/usr/bin/env bash
# Control plane under load: image LUNs added all at once through the management API while
# sessions run I/O (see benches/README.md, "Control plane under load").
#
# Per round, one fresh target process: target A with one LUN (LUN_A, default a 256 MiB file in
# the page cache) and the API on a socket in a temporary folder, state file beside it. Two
# measured windows of loadgen against A (SESSIONS sessions, QD per session, 4 KiB random reads,
# DURATION seconds each, with a per-100-ms timeline):
#   base  nothing else happens;
#   adds  ADD_DELAY seconds into the window, ADDS image LUNs are added at once (at most PARALLEL
#         requests in flight) to a second target B made with `ctl target add` just before.
#         Each LUN is a copy of a config.v1.json naming the shared fixture layer ext4_64 (a real
#         overlaybd base layer), each in its own folder with its own resultFile.
# Odd rounds run base then adds, even rounds adds then base. The target's idle VmRSS is read
# before and after the adds window (no sessions logged in, 1 s after loadgen ended), and
# `ctl status --json` must then show ADDS ready LUNs on B. Last, the same number of adds goes to a
# third target with no load: what each add costs the target in CPU, and its latency when quiet.
# The summary sets the IOPS during the burst (first request to last answer, from the timeline)
# against the same window's seconds before the client started.
#
# B rather than A: every LUN added to A would raise UNIT ATTENTION (REPORTED LUNS DATA HAS
# CHANGED) on A's sessions, and loadgen counts the CHECK CONDITION as a failed command; on B the
# running sessions see only what adding costs the process (CPU, locks, memory).
#
# Environment: ROUNDS (default 4), DURATION (15), ADDS (200), PARALLEL (200), ADD_DELAY (3),
# SESSIONS (4), QD (8), LUN_A (backing string; default a 256 MiB random file), OBD_KEEP=1 keeps
# the work folder, OBD_BIN (the target binary to measure, default the one just built; for A/B
# runs of two builds), OVERLAYBD_FIXTURES (folder holding ext4_64; default ../shared/fixtures or
# ../../shared/fixtures from the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
script_name=control-plane.sh
# shellcheck source=conformance/targets.sh
. conformance/targets.sh
# shellcheck source=benches/common/measure.sh
. benches/common/measure.sh

rounds=${ROUNDS:-4}
duration=${DURATION:-15}
adds=${ADDS:-200}
parallel=${PARALLEL:-200}
add_delay=${ADD_DELAY:-3}
sessions=${SESSIONS:-4}
qd=${QD:-8}
iqn_a=iqn.2026-12.io.overlaybd:ctlplane-a
iqn_b=iqn.2026-12.io.overlaybd:ctlplane-b

command -v python3 >/dev/null || { echo "$script_name: python3 is not installed" >&2; exit 2; }
layer=""
for dir in ${OVERLAYBD_FIXTURES:-} ../shared/fixtures ../../shared/fixtures; do
    if [ -f "$dir/ext4_64" ]; then
        layer=$(cd "$dir" && pwd)/ext4_64
        break
    fi
done
[ -n "$layer" ] || { echo "$script_name: fixture ext4_64 not found (set OVERLAYBD_FIXTURES)" >&2; exit 2; }

cargo build --release --quiet --bin overlaybd-target --example loadgen
release=$(bash scripts/target-dir.sh)/release
obd=${OBD_BIN:-$release/overlaybd-target}
loadgen=$release/examples/loadgen
adder=$PWD/benches/common/api_adds.py

work=$(mktemp -d /tmp/obd-ctlplane.XXXXXX)
pid=""
cleanup() {
    set +e
    stop_targets "$pid" "" ""
    drop_work "$work" results
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lun_a=${LUN_A:-}
if [ -z "$lun_a" ]; then
    head -c 256M /dev/urandom >"$work/a.raw"
    cat "$work/a.raw" >/dev/null
    lun_a=file:$work/a.raw
fi

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# The ADDS image configs of round $1, one folder each; prints their backing strings.
make_configs() {
    local i dir
    for i in $(seq "$adds"); do
        dir=$work/r$1/lun$i
        mkdir -p "$dir"
        printf '{"lowers": [{"file": "%s"}], "resultFile": "%s/result"}\n' "$layer" "$dir" \
            >"$dir/config.v1.json"
        echo "image:$dir/config.v1.json"
    done
}

# One measured window: round $1, kind $2 (base or adds); appends one line to $work/results:
#   round kind iops p99_us errors cpu0 cpu1 t0 t1 rss_before rss_after burst_t0 burst_t1 burst_c0 burst_c1
window() {
    local round=$1 kind=$2 tl=$work/timeline.$1.$2 out=$work/loadgen.$1.$2 lg c0 c1 t0 t1
    local rss0 rss1 b0=- b1=- bc0=- bc1=-
    rss0=$(rss_kib "$pid")
    if [ "$kind" = adds ]; then
        "$obd" ctl --api "$work/api.sock" target add "$iqn_b" >/dev/null
        mapfile -t backings < <(make_configs "$round")
    fi
    c0=$(cpu_secs "$pid")
    t0=$(date +%s.%N)
    "$loadgen" --portal "127.0.0.1:$port" --target "$iqn_a" --lun 0 --sessions "$sessions" \
        --qd "$qd" --bs 4096 --duration "$duration" --warmup 1 --timeline "$tl" >"$out" 2>&1 &
    lg=$!
    if [ "$kind" = adds ]; then
        sleep "$((1 + add_delay))"
        b0=$(date +%s.%N)
        bc0=$(cpu_secs "$pid")
        python3 "$adder" "$work/api.sock" "$iqn_b" "$parallel" "${backings[@]}" \
            >"$work/adds.$round" 2>"$work/adds.$round.err"
        bc1=$(cpu_secs "$pid")
        b1=$(date +%s.%N)
    fi
    wait "$lg" || true
    t1=$(date +%s.%N)
    c1=$(cpu_secs "$pid")
    sleep 1
    rss1=$(rss_kib "$pid")
    local iops p99 errors
    iops=$(sed -n 's/^iops=\([0-9.]*\).*/\1/p' "$out")
    p99=$(sed -n 's/^iops.* p99_us=\([0-9.]*\).*/\1/p' "$out")
    errors=$(sed -n 's/^iops.* errors=\([0-9]*\).*/\1/p' "$out")
    [ -n "$iops" ] || { echo "$script_name: loadgen failed: $(cat "$out")" >&2; iops=NA p99=NA errors=NA; }
    echo "$round $kind $iops $p99 $errors $c0 $c1 $t0 $t1 $rss0 $rss1 $b0 $b1 $bc0 $bc1" >>"$work/results"
    echo "  round $round $kind: $(tail -1 "$out")" >&2
    if [ "$kind" = adds ]; then
        local ready
        ready=$("$obd" ctl --api "$work/api.sock" status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(1 for t in s["targets"] if t["name"] == sys.argv[1] for l in t["luns"] if l["state"] == "ready"))
' "$iqn_b")
        echo "$round $ready" >>"$work/ready"
        echo "  round $round: $ready LUNs ready on B, $(awk '$4 != 201' "$work/adds.$round" | wc -l) adds failed" >&2
    fi
}

# The same adds with no load, to a third target C of round $1: what each add costs the target in
# CPU, and its latency on a quiet target. Appends "round cpu0 cpu1" to $work/idle.
idle_adds() {
    local round=$1 c0 c1
    "$obd" ctl --api "$work/api.sock" target add "$iqn_b-idle" >/dev/null
    mapfile -t backings < <(make_configs "${round}idle")
    sleep 1
    c0=$(cpu_secs "$pid")
    python3 "$adder" "$work/api.sock" "$iqn_b-idle" "$parallel" "${backings[@]}" \
        >"$work/idle.$round" 2>"$work/idle.$round.err"
    c1=$(cpu_secs "$pid")
    echo "$round $c0 $c1" >>"$work/idle"
    echo "  round $round idle adds: $(awk '$4 != 201' "$work/idle.$round" | wc -l) failed" >&2
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
    echo "round $round/$rounds" >&2
    rm -rf "$work/state" "$work/api.sock"
    mkdir -p "$work/state"
    port=$(free_port)
    "$obd" --portal "127.0.0.1:$port" --target "$iqn_a" --lun "$lun_a" --api "$work/api.sock" \
        --state "$work/state/state.json" >"$work/target.$round.log" 2>&1 &
    pid=$!
    wait_port "$port"
    sleep 1
    echo "$round $(rss_kib "$pid")" >>"$work/rss_start"
    if [ $((round % 2)) = 1 ]; then
        window "$round" base
        window "$round" adds
    else
        window "$round" adds
        window "$round" base
    fi
    echo "$round $(rss_kib "$pid")" >>"$work/rss_end"
    idle_adds "$round"
    stop_targets "$pid" "" ""
    pid=""
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "control plane under load, $(date -u +%F) on $(nproc) vCPU" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $rounds rounds x 2 windows x ${duration}s," \
    "load average before/after: $load_before / $load_after"
echo "A: $lun_a, $sessions sessions x QD $qd, 4 KiB random reads; B: $adds image LUNs of $layer," \
    "added at once (at most $parallel in flight) ${add_delay}s into the adds window"
python3 - "$work" <<'EOF'
import math, os, statistics, sys
work = sys.argv[1]
rows = [l.split() for l in open(os.path.join(work, "results"))]
ready = dict(l.split() for l in open(os.path.join(work, "ready")))
rss_start = dict(l.split() for l in open(os.path.join(work, "rss_start")))
rss_end = dict(l.split() for l in open(os.path.join(work, "rss_end")))
idle = {l.split()[0]: l.split()[1:] for l in open(os.path.join(work, "idle"))}
def adds_file(name):
    """Latencies (ms), successes, failures, first start, last end of an api_adds.py output."""
    lat, ok, t0s, t1s = [], 0, [], []
    for l in open(os.path.join(work, name)):
        if l.startswith("#"):
            continue
        s0, s1, ms, status, lun = l.split()
        lat.append(float(ms))
        t0s.append(float(s0))
        t1s.append(float(s1))
        ok += status == "201"
    return lat, ok, len(lat) - ok, min(t0s), max(t1s)
def client_cpu(name):
    for l in open(os.path.join(work, name)):
        if l.startswith("# client_cpu_s"):
            return float(l.split()[2])
    return float("nan")
def timeline(rnd, kind):
    return [tuple(map(float, l.split())) for l in open(os.path.join(work, f"timeline.{rnd}.{kind}"))]
def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[min(len(xs), max(1, math.ceil(len(xs) * p))) - 1]
by = {}
for r in rows:
    by[(r[0], r[1])] = r
print(f"{'round':5} {'order':9} {'base IOPS':>9} {'adds IOPS':>9} {'window':>7} {'burst s':>7}"
      f" {'IOPS before':>11} {'IOPS in burst':>13} {'vs base':>7} {'vs before':>9} {'ok/fail':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
      f" {'cores base/adds':>15} {'burst CPU s':>11} {'RSS 1 LUN':>9} {'RSS +adds':>9} {'KiB/LUN':>7}")
drops, bdrops, pdrops, p50s, p99s, maxs, per_lun, fails = [], [], [], [], [], [], [], 0
for rnd in sorted({r[0] for r in rows}, key=int):
    b, a = by[(rnd, "base")], by[(rnd, "adds")]
    order = "base,adds" if rows.index(b) < rows.index(a) else "adds,base"
    biops, aiops = float(b[2]), float(a[2])
    cores = lambda r: (float(r[6]) - float(r[5])) / (float(r[8]) - float(r[7]))
    # The burst: from the first request's start to the last answer.
    lat, ok, fail, bt0, bt1 = adds_file(f"adds.{rnd}")
    fails += fail
    # IOPS over the 100 ms slots that overlap the burst (the whole burst is covered).
    slots = [(t, v) for t, v in timeline(rnd, "adds") if t + 0.1 > bt0 and t < bt1]
    burst_iops = statistics.mean(v for _, v in slots) if slots else float("nan")
    # The same window before the burst, up to the client's start (its interpreter starting
    # takes CPU too): the neighbouring seconds, least apart in time.
    before = [v for t, v in timeline(rnd, "adds") if t + 0.1 <= float(a[11])]
    pre_iops = statistics.mean(before) if before else float("nan")
    # Target CPU seconds during the burst, and beyond what serving the base window's load took
    # over as long (the adds' own cost, roughly).
    burst_cpu = float(a[14]) - float(a[13])
    rss_before, rss_after = int(a[9]), int(a[10])
    kib_per_lun = (rss_after - rss_before) / len(lat)
    drops.append(1 - aiops / biops)
    bdrops.append(1 - burst_iops / biops)
    pdrops.append(1 - burst_iops / pre_iops)
    p50s.append(pct(lat, 0.5)); p99s.append(pct(lat, 0.99)); maxs.append(max(lat))
    per_lun.append(kib_per_lun)
    print(f"{rnd:5} {order:9} {biops:9,.0f} {aiops:9,.0f} {aiops / biops:7.3f} {bt1 - bt0:7.2f}"
          f" {pre_iops:11,.0f} {burst_iops:13,.0f} {burst_iops / biops:7.3f} {burst_iops / pre_iops:9.3f} {ok:>3}/{fail:<3} {pct(lat, 0.5):7.1f}"
          f" {pct(lat, 0.99):7.1f} {max(lat):7.1f} {cores(b):7.2f}/{cores(a):<7.2f}"
          f" {burst_cpu:5.2f}({burst_cpu - cores(b) * (float(a[12]) - float(a[11])):+5.2f}) {rss_before / 1024:9.1f} {rss_after / 1024:9.1f} {kib_per_lun:7.0f}")
    around = [v for t, v in timeline(rnd, "adds") if bt0 - 0.5 < t + 0.1 and t < bt1 + 0.5]
    print("      k IOPS per 100 ms, from 0.5 s before the burst to 0.5 s after: "
          + " ".join(f"{v / 1000:.0f}" for v in around))
    # I/Os the burst cost (against the seconds before it), as target CPU-seconds at the base
    # window's I/Os per CPU-second; against the CPU the same adds take on a quiet target.
    lost = (pre_iops - burst_iops) * (bt1 - bt0)
    ilat, iok, ifail, it0, it1 = adds_file(f"idle.{rnd}")
    fails += ifail
    icpu = float(idle[rnd][1]) - float(idle[rnd][0])
    print(f"      I/Os lost in the burst {lost:,.0f} = {lost / (biops / cores(b)):.2f} CPU-s of serving;"
          f" the client used {client_cpu(f'adds.{rnd}'):.2f} CPU-s;"
          f" the same {len(ilat)} adds on the quiet target: {icpu:.2f} CPU-s ({icpu / len(ilat) * 1000:.1f} ms each),"
          f" {it1 - it0:.2f} s, latency p50/p99/max {pct(ilat, 0.5):.1f}/{pct(ilat, 0.99):.1f}/{max(ilat):.1f} ms,"
          f" {iok} ok / {ifail} failed")
    print(f"      ready LUNs on B after the adds: {ready.get(rnd)};"
          f" idle RSS at start (1 LUN, no session yet) {int(rss_start[rnd]) / 1024:.1f} MiB,"
          f" at the end ({1 + len(lat)} LUNs) {int(rss_end[rnd]) / 1024:.1f} MiB;"
          f" loadgen errors base/adds {b[4]}/{a[4]}; loadgen p99 us base/adds {b[3]}/{a[3]}")
print(f"IOPS drop, whole window: " + " ".join(f"{d * 100:.1f} %" for d in drops) +
      f"; during the burst vs base: " + " ".join(f"{d * 100:.1f} %" for d in bdrops) +
      f"; during the burst vs before it: " + " ".join(f"{d * 100:.1f} %" for d in pdrops))
print(f"add latency ms, per round p50 {' '.join(f'{x:.1f}' for x in p50s)},"
      f" p99 {' '.join(f'{x:.1f}' for x in p99s)}, max {' '.join(f'{x:.1f}' for x in maxs)};"
      f" failed adds: {fails}; RSS per image LUN KiB: {' '.join(f'{x:.0f}' for x in per_lun)}")
EOF
