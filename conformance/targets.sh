# Shell helpers shared by the scripts that start our target and tgtd side by side
# (conformance/libiscsi.sh, benches/iscsi-vs-tgtd.sh). Source it; it defines functions only.
# Messages are prefixed with $script_name.

# A port in 20000-60000 that nothing listens on.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "$script_name: no free port found" >&2
    exit 2
}

# Waits up to 10 s for something to listen on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$script_name: nothing listens on port $1" >&2
    return 1
}

# Stops our target (pid $1, may be empty) and tgtd (pid $2 on control port $3, may be empty).
stop_targets() {
    local ours=$1 tgt=$2 ctrl=$3
    if [ -n "$ours" ]; then
        kill "$ours" 2>/dev/null
        wait "$ours" 2>/dev/null
    fi
    if [ -n "$tgt" ]; then
        # tgtd ignores SIGTERM while a target exists: delete it first.
        tgtadm -C "$ctrl" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1
        tgtadm -C "$ctrl" --op delete --mode system >/dev/null 2>&1
        sleep 0.5
        kill "$tgt" 2>/dev/null
        wait "$tgt" 2>/dev/null
    fi
    return 0
}

# Removes the scratch folder $1 at exit, or keeps it (and says where) when OBD_KEEP=1; $2 says
# what it holds ("logs", "results").
drop_work() {
    if [ "${OBD_KEEP:-0}" = 1 ]; then
        echo "$script_name: $2 kept in $1" >&2
    else
        rm -rf "$1"
    fi
}
