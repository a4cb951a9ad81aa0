# shellcheck shell=bash disable=SC2034,SC2154
# Shell helpers shared by the network benchmarks (benches/iscsi-vs-tgtd.sh, benches/image-lun.sh).
# Source it after conformance/targets.sh; it defines functions only. Messages are prefixed with
# $script_name.

# CPU seconds (user + system, all threads) of a process so far.
cpu_secs() {
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

# Largest VmRSS (KiB) of $1 sampled every 0.2 s until the file $2 exists.
sample_rss() {
    local pid=$1 stop=$2 max=0 v
    while [ ! -e "$stop" ]; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${v:-0}" -gt "$max" ] && max=$v
        sleep 0.2
    done
    echo "$max"
}

# Starts tgtd on 127.0.0.1:$1 (control port $2) serving file $4 as LUN 1 of target $3; sets
# tgt_pid. Its log goes to $5.
start_tgtd() {
    local port=$1 ctrl=$2 iqn=$3 file=$4 log=$5
    tgtd -f -C "$ctrl" --iscsi "portal=127.0.0.1:$port" >"$log" 2>&1 &
    tgt_pid=$!
    wait_port "$port"
    tgtadm -C "$ctrl" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
    tgtadm -C "$ctrl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$file"
    tgtadm -C "$ctrl" --lld iscsi --op bind --mode target --tid 1 -I ALL
}

# The loadgen options of a named point (benches/README.md lists them).
point_args() {
    case $1 in
        rr4k_qd1) echo "--qd 1 --bs 4096" ;;
        rr4k_qd32) echo "--qd 32 --bs 4096" ;;
        seq64k_qd8) echo "--qd 8 --bs 65536 --seq" ;;
        seq1m_qd8) echo "--qd 8 --bs 1048576 --seq" ;;
        rw4k_qd32) echo "--qd 32 --bs 4096 --write-pct 100" ;;
        sess1) echo "--qd 8 --bs 4096 --sessions 1" ;;
        sess4) echo "--qd 8 --bs 4096 --sessions 4" ;;
        sess16) echo "--qd 8 --bs 4096 --sessions 16" ;;
        *) echo "$script_name: unknown point $1" >&2; exit 2 ;;
    esac
}

# measured_run POINT SIDE PID RESULTS CMD...: runs the load command CMD (loadgen, or libiscsi's
# iscsi-perf) against the target process PID, and appends one line to the file RESULTS:
#   point side iops mibs p99_us cpu0 cpu1 wall0 wall1 max_rss_kib
# (the target's CPU seconds and the wall clock before and after, for per-CPU-second figures).
measured_run() {
    local point=$1 side=$2 pid=$3 results=$4
    shift 4
    local stop rss_out
    stop=$(mktemp -u "${TMPDIR:-/tmp}/obd-rss-stop.XXXXXX")
    rss_out=$(mktemp "${TMPDIR:-/tmp}/obd-rss.XXXXXX")
    sample_rss "$pid" "$stop" >"$rss_out" &
    local sampler=$!
    local c0 c1 t0 t1 out
    c0=$(cpu_secs "$pid")
    t0=$(date +%s.%N)
    out=$("$@" 2>&1 | tr '\r' '\n') || true
    t1=$(date +%s.%N)
    c1=$(cpu_secs "$pid")
    touch "$stop"
    wait "$sampler"
    local iops mibs p99
    if echo "$out" | grep -q '^iops average'; then
        # iscsi-perf: "iops average N (M MB/s)" on the last line; its MB are MiB.
        iops=$(echo "$out" | sed -n 's/^iops average \([0-9]*\) (\([0-9]*\) MB.*/\1/p' | tail -1)
        mibs=$(echo "$out" | sed -n 's/^iops average \([0-9]*\) (\([0-9]*\) MB.*/\2/p' | tail -1)
        p99=NA
    else
        iops=$(echo "$out" | sed -n 's/^iops=\([0-9.]*\).*/\1/p')
        mibs=$(echo "$out" | sed -n 's/^iops.* mibs=\([0-9.]*\).*/\1/p')
        p99=$(echo "$out" | sed -n 's/^iops.* p99_us=\([0-9.]*\).*/\1/p')
    fi
    if [ -z "$iops" ] || echo "$out" | grep -q 'errors=[1-9]'; then
        echo "$script_name: run failed: $point $side: $out" >&2
        iops=NA mibs=NA p99=NA
    fi
    echo "$point $side $iops $mibs ${p99:-NA} $c0 $c1 $t0 $t1 $(cat "$rss_out")" >>"$results"
    rm -f "$stop" "$rss_out"
    echo "  $point $side: $(echo "$out" | tail -1)" >&2
}
