#!/usr/bin/env bash
# Image LUN benchmark: the same disk served as a raw file and as an overlaybd image (ZFile LZ4
# layer on local disk, and from a registry through the cache, warm and cold), over iSCSI, in one
# run (see benches/README.md, "image-lun").
#
# Builds (once, kept in target/bench-image-lun/) a 1 GiB ext4 of /usr/share as one ZFile LZ4
# layer with `overlaybd-target build -z`, exports its virtual disk to a raw file, pushes the layer
# to a loopback docker-registry, and starts one target process with three LUNs:
#   0 raw   the exported raw disk (page cache warm)
#   1 local the image, its layer given by `file` in config.v1.json
#   2 warm  the image, its layer a registry blob read through --cache-dir (one full pass first)
# plus tgtd on the raw file (side "tgtd", TGTD=0 leaves it out). Each round runs every point on
# every side, in the order raw local warm tgtd, then reversed in the next round (A B B A). Then,
# per round, side "cold": a second target process with a fresh empty cache folder, whose first
# sequential 1 MiB QD 8 pass over the whole disk is measured (loadgen --once).
#
# Environment: ROUNDS (default 4), DURATION measured seconds per run (default 5), POINTS (default
# "seq1m_qd8 rr4k_qd32", names as in iscsi-vs-tgtd.sh), TGTD (1), OBD_KEEP=1 keeps the raw
# results, IMAGE_SOURCE (/usr/share) and IMAGE_SIZE (1G) for the first build, OBD_BIN another
# build of our target to serve every side (e.g. an older one: compare its image/raw ratios with
# a run of the current build; the image, once built, is kept and shared).
set -euo pipefail
cd "$(dirname "$0")/.."
script_name=image-lun.sh
# shellcheck source=conformance/targets.sh
. conformance/targets.sh
# shellcheck source=benches/common/measure.sh
. benches/common/measure.sh

rounds=${ROUNDS:-4}
duration=${DURATION:-5}
points=${POINTS:-seq1m_qd8 rr4k_qd32}
use_tgtd=${TGTD:-1}
iqn=iqn.2026-11.io.overlaybd:imglun
iqn_tgt=iqn.2026-11.org.tgt:imglun
repo=bench/imglun
built=$PWD/target/bench-image-lun

for tool in mkfs.ext4 docker-registry curl sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "$script_name: $tool is not installed" >&2; exit 2; }
done
if [ "$use_tgtd" = 1 ]; then
    for tool in tgtd tgtadm; do
        command -v "$tool" >/dev/null || { echo "$script_name: $tool is not installed (TGTD=0 skips it)" >&2; exit 2; }
    done
fi
for point in $points; do
    point_args "$point" >/dev/null
done

cargo build --release --quiet --bin overlaybd-target --example loadgen
release=$(bash scripts/target-dir.sh)/release
obd=${OBD_BIN:-$release/overlaybd-target}
loadgen=$release/examples/loadgen

work=$(mktemp -d /tmp/obd-imglun.XXXXXX)
ours_pid="" cold_pid="" tgt_pid="" reg_pid=""
tgt_ctrl=$((100 + RANDOM % 800))  # tgtd accepts small control port numbers only

cleanup() {
    set +e
    stop_targets "$ours_pid" "$tgt_pid" "$tgt_ctrl"
    stop_targets "$cold_pid" "" ""
    stop_targets "$reg_pid" "" ""
    drop_work "$work" results
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The image: one ZFile LZ4 layer (4 KiB blocks, per-block CRC), built once.
layer=$built/layer.obd
if [ ! -e "$layer" ]; then
    mkdir -p "$built"
    echo "building the image from ${IMAGE_SOURCE:-/usr/share} (once)..." >&2
    rm -f "$layer.partial" "$built/build.json"
    "$obd" build -z --size "${IMAGE_SIZE:-1G}" "${IMAGE_SOURCE:-/usr/share}" \
        "$layer.partial" "$built/build.json"
    mv "$layer.partial" "$layer"
fi
layer_size=$(stat -c %s "$layer")
echo "{\"lowers\": [{\"file\": \"$layer\"}]}" >"$work/local.json"
raw=$work/disk.raw
"$obd" export "$work/local.json" "$raw" >/dev/null
cat "$raw" "$layer" >/dev/null  # both in the page cache

# The registry, holding the layer blob.
port_reg=$(free_port)
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port_reg
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
wait_port "$port_reg"
digest=sha256:$(sha256sum "$layer" | cut -d' ' -f1)
location=$(curl -sSf -D - -o /dev/null -X POST "http://127.0.0.1:$port_reg/v2/$repo/blobs/uploads/" |
    tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
case $location in /*) location=http://127.0.0.1:$port_reg$location ;; esac
case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
curl -sSf -X PUT -H 'Content-Type: application/octet-stream' -T "$layer" \
    "$location${sep}digest=$digest" -o /dev/null
mkdir -p "$work/fs"
cat >"$work/remote.json" <<EOF
{"repoBlobUrl": "http://127.0.0.1:$port_reg/v2/$repo/blobs",
 "lowers": [{"digest": "$digest", "size": $layer_size, "dir": "$work/fs"}]}
EOF

port=$(free_port)
"$obd" --portal "127.0.0.1:$port" --target "$iqn" --lun "file:$raw" --lun "image:$work/local.json" \
    --lun "image:$work/remote.json" --cache-dir "$work/cache-warm" >"$work/ours.log" 2>&1 &
ours_pid=$!
wait_port "$port"
echo "warming the registry LUN's cache (one full pass)..." >&2
"$loadgen" --portal "127.0.0.1:$port" --target "$iqn" --lun 2 --qd 8 --bs 1048576 --seq --once \
    --duration 600 >&2

sides="raw local warm"
if [ "$use_tgtd" = 1 ]; then
    port_tgt=$(free_port)
    start_tgtd "$port_tgt" "$tgt_ctrl" "$iqn_tgt" "$raw" "$work/tgtd.log"
    sides="$sides tgtd"
fi

# One run of point $1 against side $2; appends a result line to $work/results.
run_point() {
    local point=$1 side=$2 p=$port t=$iqn lun pid=$ours_pid args
    case $side in
        raw) lun=0 ;;
        local) lun=1 ;;
        warm) lun=2 ;;
        tgtd) p=$port_tgt t=$iqn_tgt lun=1 pid=$tgt_pid ;;
    esac
    read -ra args <<<"$(point_args "$point")"
    measured_run "$point" "$side" "$pid" "$work/results" "$loadgen" --portal "127.0.0.1:$p" \
        --target "$t" --lun "$lun" --duration "$duration" --warmup 1 "${args[@]}"
}

# Round $1 of the cold side: a new process and an empty cache folder, one sequential pass.
run_cold() {
    local cport
    cport=$(free_port)
    "$obd" --portal "127.0.0.1:$cport" --target "$iqn" --lun "image:$work/remote.json" \
        --cache-dir "$work/cache-cold$1" >"$work/cold$1.log" 2>&1 &
    cold_pid=$!
    wait_port "$cport"
    measured_run seq1m_qd8 cold "$cold_pid" "$work/results" "$loadgen" --portal "127.0.0.1:$cport" \
        --target "$iqn" --lun 0 --qd 8 --bs 1048576 --seq --once --duration 600
    stop_targets "$cold_pid" "" ""
    cold_pid=""
    rm -rf "$work/cache-cold$1"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
    echo "round $round/$rounds" >&2
    order=$sides
    [ $((round % 2)) = 0 ] && order=$(echo "$sides" | tr ' ' '\n' | tac | tr '\n' ' ')
    for point in $points; do
        for side in $order; do
            run_point "$point" "$side"
        done
    done
    run_cold "$round"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "image LUN vs raw file, $(date -u +%F) on $(nproc) vCPU" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), medians of $rounds rounds x ${duration}s," \
    "load average before/after: $load_before / $load_after"
echo "image: $(du -h --apparent-size "$raw" | cut -f1) disk, layer blob $layer_size bytes (ZFile LZ4, 4 KiB blocks)"
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def num(s):
    try:
        return float(s)
    except ValueError:
        return None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
data, order, sides = {}, [], []
for point, side, iops, mibs, p99, c0, c1, t0, t1, rss in rows:
    if point not in order:
        order.append(point)
    if side not in sides:
        sides.append(side)
    d = data.setdefault((point, side), {k: [] for k in ("iops", "mibs", "p99", "cores", "mibcpu", "rss")})
    i, m, c, w = num(iops), num(mibs), num(c1) - num(c0), num(t1) - num(t0)
    d["iops"].append(i); d["mibs"].append(m); d["p99"].append(num(p99))
    d["rss"].append(num(rss) / 1024 if num(rss) else None)
    # Cores the target kept busy, and MiB served per CPU-second of the target.
    d["cores"].append(c / w if w > 0 else None)
    d["mibcpu"].append(m / (c / w) if m and c > 0 else None)
def fmt(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}"
print(f"{'point':10} {'side':6} {'MiB/s':>8} {'IOPS':>9} {'vs raw':>6} {'p99 us':>8} {'cores':>5}"
      f" {'MiB/CPU-s':>9} {'vs raw':>6} {'RSS MiB':>7}")
for p in order:
    base = data.get((p, "raw"), {})
    for s in sides:
        d = data.get((p, s))
        if not d:
            continue
        m = {k: med(v) for k, v in d.items()}
        b = {k: med(v) for k, v in base.items()}
        r = lambda k: "-" if m.get(k) is None or not b.get(k) else f"{m[k] / b[k]:.2f}"
        print(f"{p:10} {s:6} {fmt(m['mibs'], 1):>8} {fmt(m['iops']):>9} {r('mibs'):>6} {fmt(m['p99']):>8}"
              f" {fmt(m['cores'], 2):>5} {fmt(m['mibcpu']):>9} {r('mibcpu'):>6} {fmt(m['rss']):>7}")
# Per-round ratio local/raw for the goal (same round, neighbouring runs).
for p in order:
    pairs = list(zip(data.get((p, "local"), {}).get("mibs", []), data.get((p, "raw"), {}).get("mibs", [])))
    rs = [a / b for a, b in pairs if a and b]
    if rs:
        print(f"{p}: local/raw per round " + " ".join(f"{x:.2f}" for x in rs) + f", median {statistics.median(rs):.2f}")
EOF
