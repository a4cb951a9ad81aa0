#!/bin/busybox sh
# /init of the test guest (busybox ash). run.sh packs this file, with the run's parameters in
# /etc/vmi.conf and the expected file hashes in /etc/vmi.files, into an archive appended to the base
# initramfs that build-guest.sh made.
#
# It logs the kernel's iSCSI initiator in to the target, checks the disk against values the host
# computed, and writes one line per check to the second serial port (and the console):
#     RESULT <case> PASS|FAIL <seconds>s <reason>
# Other lines on that port: "VMI: guest up", "VMI: done", and "INFO ..." facts for the host.
# Every wait is bounded by a deadline on /proc/uptime: under TCG a `sleep 0.1` can last much longer
# than asked, so counting iterations would not bound anything.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/lock/iscsi /tmp /mnt /var/lib/iscsi /etc/iscsi

OUT=/dev/ttyS1
say() { echo "$*" > "$OUT"; echo "$*" > /dev/console; }
info() { say "INFO $*"; }
say "VMI: guest up"

. /etc/vmi.conf

# Uptime in centiseconds (an integer, so ash arithmetic can compare and subtract it).
now_cs() {
    read -r up _ < /proc/uptime
    n="${up%.*}${up#*.}"
    while [ "${#n}" -gt 1 ] && [ "${n#0}" != "$n" ]; do n=${n#0}; done
    echo "$n"
}
secs() { printf '%d.%02d' $(($1 / 100)) $(($1 % 100)); }

FAILED=0
CASE_T0=0
start() { CASE_T0=$(now_cs); }
# result CASE PASS|FAIL REASON...: one line, with the time since the last `start`.
result() {
    c=$1 s=$2
    shift 2
    say "RESULT $c $s $(secs $(($(now_cs) - CASE_T0)))s $*"
    [ "$s" = PASS ] || FAILED=1
}

# wait_until SECONDS COMMAND...: runs COMMAND until it succeeds or the deadline passes.
wait_until() {
    deadline=$(($(now_cs) + $1 * 100))
    shift
    while ! "$@"; do
        [ "$(now_cs)" -ge "$deadline" ] && return 1
        sleep 0.1
    done
    return 0
}

# Sends a command's output to the console (the host keeps it in console.log) with a prefix.
show() {
    prefix=$1
    shift
    "$@" 2>&1 | sed "s/^/$prefix /" > /dev/console
}

finish() {
    [ -n "$DISK" ] && umount /mnt 2>/dev/null
    timeout -s KILL 30 iscsiadm -m node -U all > /dev/null 2>&1
    show DMESG dmesg
    say "VMI: done failed=$FAILED uptime=$(secs "$(now_cs)")s"
    sync
    poweroff -f
    sleep 5
}

# --- kernel modules and network ----------------------------------------------------------------
start
# ISCSI_RECV=workqueue: iscsi_tcp reads the socket from its workqueue instead of the network softirq
# (recv_from_iscsi_q=1); run.sh explains when that matters (--iscsi-recv).
# The multipath case also loads device-mapper multipath and the ALUA device handler (before the
# login, so that scsi_dh_alua attaches to the disks as sd finds them).
mod_lists=/etc/modules.order
[ "${MULTIPATH:-0}" = 1 ] && mod_lists="$mod_lists /etc/modules.multipath"
cat $mod_lists | while read -r ko; do
    args=""
    case "$ko" in */iscsi_tcp.ko*) [ "${ISCSI_RECV:-softirq}" = workqueue ] && args=recv_from_iscsi_q=1 ;; esac
    # shellcheck disable=SC2086
    insmod "$ko" $args 2>/dev/null || info "insmod $ko $args failed"
done
info "iscsi_tcp recv_from_iscsi_q=$(cat /sys/module/iscsi_tcp/parameters/recv_from_iscsi_q 2>/dev/null)"
depmod 2>/dev/null # lets the kernel's request_module find crypto algorithms through modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
if ip link show eth0 > /dev/null 2>&1; then
    result boot PASS "kernel $(uname -r), modules loaded, eth0 up"
else
    result boot FAIL "no eth0 (virtio_net did not load?)"
    finish
fi

# --- open-iscsi ---------------------------------------------------------------------------------
echo "InitiatorName=$INITIATOR_NAME" > /etc/iscsi/initiatorname.iscsi
# The packaged defaults, then the overrides: node.startup manual; fewer discovery reopens and
# login retries so a dead target fails in seconds; a 15 s NOP-Out timeout because slirp under TCG
# can stall a connection for ~5 s (pings stay on); a 30 s replacement_timeout (default 120) bounds
# how long I/O waits for a lost session to come back.
{
    cat /etc/iscsi/iscsid.conf.dist
    echo "iscsid.startup = /bin/true"
    echo "node.startup = manual"
    echo "discovery.sendtargets.reopen_max = 1"
    echo "node.session.initial_login_retry_max = 2"
    echo "node.conn[0].timeo.noop_out_interval = 5"
    echo "node.conn[0].timeo.noop_out_timeout = 15"
    echo "node.session.timeo.replacement_timeout = 30"
} > /etc/iscsi/iscsid.conf
start
iscsid -f > /tmp/iscsid.log 2>&1 &
# iscsiadm exits 20 (ISCSI_ERR_ISCSID_NOTCONN) until iscsid listens; 21 means "no sessions".
iscsid_up() {
    iscsiadm -m session > /dev/null 2>&1
    [ $? != 20 ]
}
if wait_until 10 iscsid_up; then
    result iscsid PASS "answering"
else
    show ISCSID cat /tmp/iscsid.log
    result iscsid FAIL "iscsid did not answer in 10 s"
    finish
fi

# --- container: the image service on this node (CONTAINER=1, run.sh --container) ----------------
# Our target runs here, on the guest's loopback, with its API socket; `overlaybd-target attach`
# turns image references on the host's registry (REGISTRY, plain HTTP) into disks through it and
# this guest's open-iscsi; each image's application runs with chroot. Steps, one RESULT each:
# container_target (the target answers on its API), container_run (attach, mount, run; the time
# from attach to the application's first output), container_reattach (the same device again),
# container_wwn (two images attached at once get distinct WWNs; detached and attached again, the
# same), container_rw (--rw: a file written in the container survives detach and re-attach),
# container_blackout (a third image, reached through the host's fault proxy at PROXY: with its
# files not read yet, the proxy is told to refuse every request for BLACKOUT_SECS; the files'
# checksums, read meanwhile, come out right once it passes, with no I/O or ext4 error in the
# kernel log: the target held the reads), container_fail (the same image attached again with
# --remote-failure fail:FAIL_SECS after `ctl cache purge --all`: during a second blackout a file
# read before still reads, a file not read yet fails with EIO within the deadline, with a
# medium error and no ext4 error in the kernel log, and reads right once the blackout is over),
# container_trace (a second target, learning traces, reaches the bulk image through the host's
# slow proxy at SLOW: the first start, a mount and a read of every file, records a trace; after
# detach and a purge of its cache, the second start replays it; both starts' times from attach
# to the first output, and what each fetched, are reported),
# container_detach (every attached disk gone, the target serves none of them).
OBD=/usr/local/bin/overlaybd-target
API=/run/obd.sock
obd_attach() {
    timeout -s KILL 120 "$OBD" attach --api "$API" --plain-http "$REGISTRY" --wait 90 "$@" 2> /tmp/attach.err
}
wwid_of() { cat "/sys/block/${1#/dev/}/device/wwid" 2>/dev/null; }
container_cases() {
    start
    mkdir -p /tmp/obd-cache /mnt/app /mnt/app2 /mnt/rw
    "$OBD" --portal 127.0.0.1:3260 --api "$API" --no-state --plain-http "$REGISTRY" \
        --plain-http "$PROXY" --cache-dir /tmp/obd-cache > /tmp/target.log 2>&1 &
    target_up() { "$OBD" ctl --api "$API" status > /dev/null 2>&1; }
    if wait_until 30 target_up; then
        result container_target PASS "overlaybd-target answers on $API"
    else
        show TARGET cat /tmp/target.log
        result container_target FAIL "the target did not answer on $API within 30 s"
        return
    fi

    start
    t0=$(now_cs)
    dev=$(obd_attach "$REGISTRY/$APP_REF")
    case "$dev" in
        /dev/sd*) ;;
        *) show ATTACH cat /tmp/attach.err; show TARGET cat /tmp/target.log
           result container_run FAIL "attach printed '$dev': $(tail -1 /tmp/attach.err)"; return ;;
    esac
    t_attached=$(now_cs)
    info "attach $REGISTRY/$APP_REF -> $dev in $(secs $((t_attached - t0)))s"
    if ! mount -o ro "$dev" /mnt/app 2> /tmp/mount.err; then
        result container_run FAIL "mount $dev: $(tail -1 /tmp/mount.err)"
        return
    fi
    first=$(chroot /mnt/app /app/run.sh 2>&1 | head -1)
    t_out=$(now_cs)
    chroot /mnt/app /app/run.sh > /tmp/app.out 2>&1
    show APP cat /tmp/app.out
    if [ "$first" = "$APP_FIRST_LINE" ] && [ "$(md5sum < /tmp/app.out | cut -d' ' -f1)" = "$APP_OUTPUT_MD5" ]; then
        info "attach_to_first_output $(secs $((t_out - t0)))s (attach $(secs $((t_attached - t0)))s)"
        result container_run PASS "$dev: '$first' $(secs $((t_out - t0)))s after attach started"
    else
        result container_run FAIL "the application printed '$first' (output md5 $(md5sum < /tmp/app.out | cut -d' ' -f1))"
        return
    fi

    start
    again=$(obd_attach "$REGISTRY/$APP_REF")
    if [ "$again" = "$dev" ]; then
        result container_reattach PASS "attach again printed $again"
    else
        result container_reattach FAIL "attach again printed '$again', not $dev: $(tail -1 /tmp/attach.err)"
    fi

    start
    dev2=$(obd_attach "$REGISTRY/$APP2_REF")
    w1=$(wwid_of "$dev") w2=$(wwid_of "$dev2")
    info "wwid $APP_REF $w1"
    info "wwid $APP2_REF $w2"
    ok=0
    if [ -n "$w1" ] && [ -n "$w2" ] && [ "$w1" != "$w2" ] && mount -o ro "$dev2" /mnt/app2 &&
        [ "$(chroot /mnt/app2 /app/run.sh 2>&1 | head -1)" = "$APP2_FIRST_LINE" ]; then
        umount /mnt/app2
        timeout -s KILL 60 "$OBD" detach --api "$API" "$dev2" > /tmp/detach.out 2>&1
        dev2b=$(obd_attach "$REGISTRY/$APP2_REF")
        w2b=$(wwid_of "$dev2b")
        [ "$w2b" = "$w2" ] && ok=1
    fi
    if [ "$ok" = 1 ]; then
        result container_wwn PASS "$dev $w1, $dev2 $w2; after detach and attach $dev2b $w2b"
    else
        show ATTACH cat /tmp/attach.err /tmp/detach.out
        result container_wwn FAIL "wwids '$w1' and '$w2' (after re-attach '${w2b:-}'), $APP2_REF on '${dev2:-}'"
    fi

    start
    rw=$(obd_attach --rw /tmp/rw1 "$REGISTRY/$APP_REF")
    note="written in the container $(now_cs)"
    ok=0
    if mount "$rw" /mnt/rw 2> /tmp/mount.err &&
        chroot /mnt/rw /bin/sh -c "mkdir -p /data && echo '$note' > /data/note.txt" && sync &&
        umount /mnt/rw && timeout -s KILL 60 "$OBD" detach --api "$API" /tmp/rw1 > /tmp/detach.out 2>&1; then
        rw2=$(obd_attach --rw /tmp/rw1 "$REGISTRY/$APP_REF")
        if mount "$rw2" /mnt/rw 2>> /tmp/mount.err && [ "$(cat /mnt/rw/data/note.txt)" = "$note" ]; then
            ok=1
        fi
        info "rw wwid $(wwid_of "$rw2")"
        umount /mnt/rw 2>/dev/null
    fi
    if [ "$ok" = 1 ] && [ "$(wwid_of "$rw2")" != "$w1" ]; then
        result container_rw PASS "$rw then $rw2: the note written in the container was there after detach and attach"
    else
        show ATTACH cat /tmp/attach.err /tmp/detach.out /tmp/mount.err
        result container_rw FAIL "the note did not survive ($rw, then '${rw2:-}'), or the writable disk has the read-only one's WWN"
    fi

    start
    container_blackout
    start
    container_fail
    start
    container_trace
    start
    umount /mnt/app 2>/dev/null
    for d in "$dev" "$dev2b" "$rw2" "$bulk" "$bulkf"; do
        [ -n "$d" ] && timeout -s KILL 60 "$OBD" detach --api "$API" "$d" >> /tmp/detach.out 2>&1
    done
    left=$("$OBD" ctl --api "$API" status 2>&1 | grep -c 'overlaybd.attach')
    sessions=$(iscsiadm -m session 2>/dev/null | grep -c 'overlaybd.attach')
    if [ "$left" = 0 ] && [ "$sessions" = 0 ]; then
        result container_detach PASS "no attached target or session left"
    else
        show DETACH cat /tmp/detach.out
        result container_detach FAIL "$left attach target(s) and $sessions session(s) left"
    fi
    show TARGET cat /tmp/target.log
}
# The blackout step of container_cases; sets bulk (the device, for detach).
container_blackout() {
    local kernel_errors t_black t_read
    mkdir -p /mnt/bulk
    bulk=$(timeout -s KILL 120 "$OBD" attach --api "$API" --plain-http "$PROXY" --wait 90 \
        "$PROXY/$BULK_REF" 2> /tmp/attach.err)
    case "$bulk" in
        /dev/sd*) ;;
        *) show ATTACH cat /tmp/attach.err
           result container_blackout FAIL "attach printed '$bulk': $(tail -1 /tmp/attach.err)"; return ;;
    esac
    if ! mount -o ro "$bulk" /mnt/bulk 2> /tmp/mount.err; then
        result container_blackout FAIL "mount $bulk: $(tail -1 /tmp/mount.err)"
        return
    fi
    dmesg -c > /dev/null
    if ! wget -q -O /dev/null "http://$PROXY/__fault/blackout/$BLACKOUT_SECS"; then
        result container_blackout FAIL "the fault proxy at $PROXY did not start the blackout"
        return
    fi
    t_black=$(now_cs)
    (cd /mnt/bulk && md5sum data/*) > /tmp/bulk.md5 2> /tmp/bulk.err
    t_read=$(now_cs)
    show BULK cat /tmp/bulk.md5 /tmp/bulk.err
    kernel_errors=$(dmesg | grep -cE 'I/O error|EXT4-fs (error|warning)|critical medium error|timing out command')
    show KERNEL dmesg
    info "blackout ${BLACKOUT_SECS}s: checksums read in $(secs $((t_read - t_black)))s"
    umount /mnt/bulk
    if [ "$(md5sum < /tmp/bulk.md5 | cut -d' ' -f1)" != "$BULK_MD5S" ]; then
        result container_blackout FAIL "wrong checksums after the blackout: $(head -c 200 /tmp/bulk.err)"
    elif [ "$kernel_errors" != 0 ]; then
        result container_blackout FAIL "$kernel_errors I/O or ext4 error line(s) in the kernel log"
    elif [ $((t_read - t_black)) -lt $((BLACKOUT_SECS * 50)) ]; then
        # Under half the blackout: the files were cached after all, so nothing was held.
        result container_blackout FAIL "read in $(secs $((t_read - t_black)))s: not held by the blackout"
    else
        result container_blackout PASS "checksums right after a ${BLACKOUT_SECS}s blackout ($(secs $((t_read - t_black)))s), no kernel I/O error"
    fi
}
# The fail-policy step of container_cases; sets bulkf (the device, for detach).
container_fail() {
    local cached uncached want got t0 t1 t_fail blackout kernel_errors medium cached_ok failed
    mkdir -p /mnt/bulkf
    # Nothing is cached after this: every image's next reads come from its registry again.
    "$OBD" ctl --api "$API" cache purge --all > /tmp/purge.out 2>&1
    info "fail: purged $(grep -c '^purged' /tmp/purge.out) layer(s) from the cache"
    bulkf=$(timeout -s KILL 120 "$OBD" attach --api "$API" --plain-http "$PROXY" --wait 90 \
        --remote-failure "fail:${FAIL_SECS}s" "$PROXY/$BULK_REF" 2> /tmp/attach.err)
    case "$bulkf" in
        /dev/sd*) ;;
        *) show ATTACH cat /tmp/attach.err
           result container_fail FAIL "attach --remote-failure printed '$bulkf': $(tail -1 /tmp/attach.err)"; return ;;
    esac
    if ! mount -o ro "$bulkf" /mnt/bulkf 2> /tmp/mount.err; then
        result container_fail FAIL "mount $bulkf: $(tail -1 /tmp/mount.err)"
        return
    fi
    set -- /mnt/bulkf/data/*
    cached=$1 uncached=$2
    want=$(grep " data/${uncached##*/}\$" /tmp/bulk.md5 | cut -d' ' -f1)
    md5sum "$cached" > /dev/null
    # The guest's page cache would answer without asking the target: drop it.
    sync
    echo 3 > /proc/sys/vm/drop_caches
    dmesg -c > /dev/null
    blackout=$((FAIL_SECS * 2))
    if ! wget -q -O /dev/null "http://$PROXY/__fault/blackout/$blackout"; then
        result container_fail FAIL "the fault proxy at $PROXY did not start the blackout"
        return
    fi
    t0=$(now_cs)
    cached_ok=0
    md5sum "$cached" > /dev/null 2> /tmp/cached.err && cached_ok=1
    t1=$(now_cs)
    failed=0
    dd if="$uncached" of=/dev/null bs=1048576 count=1 iflag=direct 2> /tmp/dd.err || failed=1
    t_fail=$(now_cs)
    kernel_errors=$(dmesg | grep -cE 'EXT4-fs (error|warning)|timing out command')
    medium=$(dmesg | grep -ciE 'medium error')
    show KERNEL dmesg
    info "fail: cached read $(secs $((t1 - t0)))s, uncached read failed=$failed after $(secs $((t_fail - t1)))s"
    # Once the blackout is over the same file reads right.
    while [ "$(now_cs)" -lt $((t0 + blackout * 100 + 100)) ]; do sleep 0.5; done
    got=$(md5sum < "$uncached" | cut -d' ' -f1)
    umount /mnt/bulkf
    if [ "$cached_ok" != 1 ]; then
        result container_fail FAIL "a cached file failed to read during the blackout: $(tail -1 /tmp/cached.err)"
    elif [ "$failed" != 1 ]; then
        result container_fail FAIL "an uncached read succeeded during the blackout (was it cached?)"
    elif [ $((t_fail - t1)) -gt $(((FAIL_SECS + 8) * 100)) ] || [ $((t_fail - t1)) -lt $(((FAIL_SECS - 1) * 100)) ]; then
        result container_fail FAIL "the uncached read failed after $(secs $((t_fail - t1)))s, not within ${FAIL_SECS}s (+8)"
    elif [ "$kernel_errors" != 0 ] || [ "$medium" = 0 ]; then
        result container_fail FAIL "$kernel_errors ext4/timeout line(s) and $medium medium error line(s) in the kernel log"
    elif [ -z "$want" ] || [ "$got" != "$want" ]; then
        result container_fail FAIL "after the blackout ${uncached##*/} has md5 $got, not '$want'"
    else
        result container_fail PASS "cached file read in the blackout; uncached read failed after $(secs $((t_fail - t1)))s (fail:${FAIL_SECS}s), right after it"
    fi
}
# One start for container_trace: attach the bulk image through the learning target at LAPI,
# mount it, read every file (the application's start), print its first line. Sets start_dev,
# start_secs (attach to first output), start_app_secs (mount and application, from the disk's
# arrival to the first output) and start_fetched (the registry requests the start made).
trace_start() {
    local t0 t_attached before after first
    before=$(learn_requests)
    t0=$(now_cs)
    start_dev=$(timeout -s KILL 120 "$OBD" attach --api "$LAPI" --plain-http "$SLOW" --wait 90 \
        "$SLOW/$BULK_REF" 2> /tmp/attach.err)
    case "$start_dev" in
        /dev/sd*) ;;
        *) show ATTACH cat /tmp/attach.err; return 1 ;;
    esac
    t_attached=$(now_cs)
    mount -o ro "$start_dev" /mnt/start 2> /tmp/mount.err || { show MOUNT cat /tmp/mount.err; return 1; }
    # The image has no /dev: its application reads every file into a checksum, then prints it.
    first=$(chroot /mnt/start /bin/sh -c 'cat /data/* | /bin/busybox md5sum' 2>&1 | head -1)
    start_secs=$(secs $(($(now_cs) - t0)))
    start_app_secs=$(secs $(($(now_cs) - t_attached)))
    after=$(learn_requests)
    start_fetched=$((after - before))
    case "$first" in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]*) ;;
        *) info "trace: the start printed '$first'"; return 1 ;;
    esac
    [ -z "$start_sum" ] || [ "$first" = "$start_sum" ] || { info "trace: checksum $first, first start $start_sum"; return 1; }
    start_sum=$first
}
# Registry requests the learning target has made (its status's cache line).
learn_requests() {
    "$OBD" ctl --api "$LAPI" status 2>/dev/null | sed -n 's/.*registry requests \([0-9]*\).*/\1/p' | head -1
}
# The attach target's IQN on the learning target (one is attached at a time).
learn_iqn() {
    "$OBD" ctl --api "$LAPI" status 2>/dev/null | awk '$1 == "target" && $2 ~ /overlaybd.attach/ { print $2; exit }'
}
LAPI=/run/obd-learn.sock
# After a failed step of container_trace: nothing of the learning target is left.
trace_cleanup() {
    show LEARN cat /tmp/learn.log
    umount /mnt/start 2>/dev/null
    [ -z "$start_dev" ] || timeout -s KILL 60 "$OBD" detach --api "$LAPI" "$start_dev" >> /tmp/detach-learn.out 2>&1
    kill "$learn_pid" 2>/dev/null
    wait "$learn_pid" 2>/dev/null
}
container_trace() {
    start_dev="" start_sum=""
    local first_secs first_app first_fetched mode1 records replay
    mkdir -p /tmp/obd-learn /tmp/obd-learn-cache /mnt/start
    # Global settings only: attach adds the targets through the API.
    printf '[global]\nlearn_traces = true\nlearn_seconds = 60\n' > /tmp/learn.toml
    "$OBD" --config /tmp/learn.toml --state /tmp/obd-learn/state.toml --portal 127.0.0.1:3261 \
        --api "$LAPI" --plain-http "$SLOW" --cache-dir /tmp/obd-learn-cache > /tmp/learn.log 2>&1 &
    learn_pid=$!
    learn_up() { "$OBD" ctl --api "$LAPI" status > /dev/null 2>&1; }
    if ! wait_until 30 learn_up; then
        trace_cleanup
        result container_trace FAIL "the learning target did not answer on $LAPI within 30 s"
        return
    fi
    if ! trace_start; then
        trace_cleanup
        result container_trace FAIL "the first start failed ($start_dev)"
        return
    fi
    first_secs=$start_secs first_app=$start_app_secs first_fetched=$start_fetched
    mode1=$("$OBD" ctl --api "$LAPI" trace show "$(learn_iqn)" 0 2>&1 | awk '$1 == "mode" { print $2 }')
    umount /mnt/start
    # Detaching closes the LUN, which ends the recording and writes the trace.
    timeout -s KILL 60 "$OBD" detach --api "$LAPI" "$start_dev" > /tmp/detach-learn.out 2>&1
    # The trace is written in the background once the LUN is gone: wait for its ok file.
    learned() { set -- /tmp/obd-learn/traces/*.trace.ok; [ -e "$1" ]; }
    wait_until 10 learned || info "trace: no trace's ok file after 10 s: $(ls /tmp/obd-learn/traces)"
    set -- /tmp/obd-learn/traces/*.trace
    records=$("$OBD" trace inspect "$1" 2>/dev/null | sed -n 's/.*binary trace, \([0-9]*\) records.*/\1/p' | head -1)
    info "trace: first start $first_secs s ($first_app s after the disk appeared), $first_fetched registry requests; LUN $mode1; learned $1 (${records:-no} records)"
    # A cold second start: nothing of the image in the target's cache, nor in the page cache.
    "$OBD" ctl --api "$LAPI" cache purge --all > /tmp/purge-learn.out 2>&1
    sync
    echo 3 > /proc/sys/vm/drop_caches
    if ! trace_start; then
        trace_cleanup
        result container_trace FAIL "the second start failed ($start_dev)"
        return
    fi
    replay=$("$OBD" ctl --api "$LAPI" trace show "$(learn_iqn)" 0 2>&1 | awk '$1 == "mode" { print $2 }')
    umount /mnt/start
    timeout -s KILL 60 "$OBD" detach --api "$LAPI" "$start_dev" >> /tmp/detach-learn.out 2>&1
    info "trace: second start $start_secs s ($start_app_secs s after the disk appeared), $start_fetched registry requests; LUN $replay"
    show LEARNLOG grep -E 'LUN added|replay|learned|recording' /tmp/learn.log
    kill "$learn_pid" 2>/dev/null
    wait "$learn_pid" 2>/dev/null
    if [ "$mode1" != recording ] || [ -z "$records" ] || [ "$records" = 0 ] || [ "$replay" != replaying ]; then
        show LEARN cat /tmp/learn.log
        result container_trace FAIL "first start: LUN '$mode1', trace of '${records:-no}' records; second start: LUN '$replay' (want recording, some records, replaying)"
    else
        result container_trace PASS "learned $records reads at the first start ($first_secs s from attach to first output, $first_app s after the disk appeared), replayed them at the cold second start ($start_secs s, $start_app_secs s)"
    fi
}
if [ "${CONTAINER:-0}" = 1 ]; then
    container_cases
    finish
fi

PORTAL="$PORTAL_HOST:$PORTAL_PORT"

if [ "$SCSI_LOG" = 1 ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
    T=/sys/kernel/tracing
    echo 8192 > "$T/buffer_size_kb"
    echo 1 > "$T/events/scsi/scsi_dispatch_cmd_start/enable"
    echo 1 > "$T/events/scsi/scsi_dispatch_cmd_done/enable"
    # SCSI_LOG_MLCOMPLETE level 1 (bits 12-14): sd logs every command that did not complete GOOD,
    # with its CDB and decoded sense, to the kernel log.
    echo 4096 > /proc/sys/dev/scsi/logging_level
fi

# --- SCSI command log ---------------------------------------------------------------------------
# scsi_log_report: the scsi_log step (with --scsi-log), at the end of the disk checks and of the
# multipath case.
scsi_log_report() {
    start
    cat "$T/trace" > /tmp/trace
    n=$(grep -c scsi_dispatch_cmd_start /tmp/trace)
    # "SCSI start|done <uptime seconds> <fields>"
    sed -n 's/^.* \([0-9]*\.[0-9]*\): scsi_dispatch_cmd_\(start\|done\): /\2 \1 /p' /tmp/trace |
        sed 's/^/SCSI /' > /dev/console
    grep scsi_dispatch_cmd_done /tmp/trace | grep -v 'host=DID_OK.*status=SAM_STAT_GOOD)' > /tmp/bad
    dmesg | grep -E 'tag#[0-9]+ (Sense Key|Add\. Sense)' > /tmp/sense
    # One line per command that did not complete GOOD: LUN, CDB, result and the sense sd decoded.
    # sd logs the sense with the same tag the trace shows as driver_tag; tags are reused, so the
    # n-th failed command with tag X takes the n-th "Sense Key"/"Add. Sense" pair logged for X.
    awk '
        FILENAME == "/tmp/sense" {
            match($0, /tag#[0-9]+/); t = substr($0, RSTART + 4, RLENGTH - 4)
            line = $0; sub(/^.*tag#[0-9]+ /, "", line)
            if (line ~ /^Sense Key/) { nk[t]++; key[t, nk[t]] = line } else { na[t]++; asc[t, na[t]] = line }
            next
        }
        {
            match($0, /lun=[0-9]+/); lun = substr($0, RSTART, RLENGTH)
            match($0, /driver_tag=[0-9-]+/); t = substr($0, RSTART + 11, RLENGTH - 11)
            match($0, /cmnd=\([^)]*\)/); cmd = substr($0, RSTART + 6, RLENGTH - 7)
            match($0, /result=\([^)]*\)/); res = substr($0, RSTART + 8, RLENGTH - 9)
            sense = ""
            if (res ~ /CHECK_CONDITION/) { used[t]++; sense = " | " key[t, used[t]] " | " asc[t, used[t]] }
            print lun " " cmd " -> " res sense
        }' /tmp/sense /tmp/bad > /tmp/cc
    while read -r l; do info "not_good $l"; done < /tmp/cc
    info "commands $(sed -n 's/^.*scsi_dispatch_cmd_start: .*cmnd=(\([A-Z_0-9]*\).*$/\1/p' /tmp/trace |
        sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')"
    if [ "$n" -gt 0 ]; then
        result scsi_log PASS "$n commands, $(grep -c CHECK_CONDITION /tmp/cc) CHECK CONDITION, $(grep -vc CHECK_CONDITION /tmp/cc) other not GOOD"
    else
        result scsi_log FAIL "no scsi_dispatch_cmd_start events recorded"
    fi
}

# --- multipath (MULTIPATH=1, run.sh --multipath) -------------------------------------------------
# One LUN through two portals of the same target: PORTAL, straight, and PORTAL2, the host's TCP
# fault proxy in front of the target's second portal. Debian's multipath-tools assembles one
# device-mapper device of the two sd disks, and a write/read workload on it survives the proxy
# cutting its link (no FIN, no reset: an outage of the network) and the link coming back.
# The guest has no udev: libdevmapper makes its own nodes (DM_DISABLE_UDEV=1), multipathd reads
# the WWID from sysfs (VPD 0x83; uid_attribute ""), is told about each disk with
# `multipathd add path` (what udev's add event would do), and waits only missing_uev_wait_timeout
# for the creation uevent no udev will relay. Its path checker (tur) reinstates the path. Steps:
# mp_discovery (SendTargets through PORTAL lists the IQN in two portal groups), mp_login (a
# session through each portal, each with a disk of LUN $LUN, both with the same WWID), mp_map
# (one multipath map of both disks, each path active in the kernel's map, active and ready for
# multipathd, "active ready running" in `multipath -ll`; ALUA: the alua hardware handler, the
# kernel's port groups of the two paths differ, the alua prioritizer gives both the same
# priority), mp_io (a pass of the workload whose I/O went through both disks), mp_cut (the host
# cuts PORTAL2's link on `VMI: mp-cut`; passes continue, each writes new random data and reads
# it back, until the kernel failed the cut path and MP_ONE_PATH passes ran on the other path
# alone), mp_restore (on `VMI: mp-restore` the host restores the link; passes continue until
# both paths are up again as in mp_map, then a pass must go through both disks), mp_logout (map
# removed, sessions closed). On the host, run.sh compares the region in the image with the last
# pass's data (mp_host_verify). Every wait is bounded.
MP_AT=16 MP_MIB=8 MP_ONE_PATH=2
MP_DEV="" MP_NAME="" MP_WANT=""
# mp_paths: "sdX PORT" for each disk of LUN $LUN on an iSCSI session (PORT: where the session's
# connection goes, from the guest's side).
mp_paths() {
    for d in /sys/class/scsi_device/*:*:*:"$LUN"; do
        [ -e "$d" ] || continue
        h=${d##*/}
        h=${h%%:*}
        [ -e "/sys/class/iscsi_host/host$h" ] || continue
        sid=$(readlink -f "$d/device" | sed -n 's|.*/session\([0-9]*\)/.*|\1|p')
        port=$(cat "/sys/class/iscsi_connection/connection$sid:0/persistent_port" 2>/dev/null)
        for b in "$d"/device/block/*; do
            [ -e "$b" ] && [ "$(cat "$b/size")" != 0 ] && echo "${b##*/} $port"
        done
    done
}
mp_two_disks() { [ "$(mp_paths | wc -l)" = 2 ]; }
# mp_state DEV: the kernel's state of path DEV (sdX) in the map: A (active) or F (failed).
mp_state() {
    dmsetup status "$MP_NAME" 2>/dev/null | awk -v d="$(cat "/sys/block/$1/dev")" \
        '{ for (i = 1; i < NF; i++) if ($i == d && ($(i + 1) == "A" || $(i + 1) == "F")) print $(i + 1) }'
}
# mp_checker DEV: multipathd's view of path DEV: "dm-state checker-state device-state priority".
mp_checker() { multipathd show paths raw format "%d %t %T %o %p" 2>/dev/null | awk -v d="$1" '$1 == d { print $2, $3, $4, $5 }'; }
# mp_ll: the paths `multipath -ll` (which runs the checkers itself) shows active ready running.
mp_ll() { multipath -ll "$MP_NAME" 2>/dev/null | grep -cE ' active +ready +running'; }
# mp_both_up: both paths active in the kernel's map, active and ready for multipathd, and for
# `multipath -ll`.
mp_both_up() {
    [ "$(mp_state "$MP_D1")" = A ] && [ "$(mp_state "$MP_D2")" = A ] &&
        [ "$(mp_checker "$MP_D1" | cut -d' ' -f1-2)" = "active ready" ] &&
        [ "$(mp_checker "$MP_D2" | cut -d' ' -f1-2)" = "active ready" ] && [ "$(mp_ll)" = 2 ]
}
mp_cut_failed() { [ "$(mp_state "$MP_D2")" = F ]; }
# I/O requests completed by disk DEV (reads + writes).
mp_ios() { awk '{ print $1 + $5 }' "/sys/block/$1/stat"; }
# mp_pass: one pass of the workload: new random data for the region (two halves), each half
# written by its own dd at once (O_DIRECT, 1 MiB requests, fsync), then both read back the same
# way; the md5 of what was read must be the md5 of what was written. Sets MP_WANT; says why not.
mp_pass() {
    h=$((MP_MIB / 2))
    dd if=/dev/urandom of=/tmp/mp.a bs=1048576 count=$h 2>/dev/null
    dd if=/dev/urandom of=/tmp/mp.b bs=1048576 count=$h 2>/dev/null
    want=$(cat /tmp/mp.a /tmp/mp.b | md5sum | cut -d' ' -f1)
    timeout -s KILL 150 dd if=/tmp/mp.a of="$MP_DEV" bs=1048576 seek=$MP_AT oflag=direct conv=notrunc,fsync 2> /tmp/mp.ea &
    wa=$!
    timeout -s KILL 150 dd if=/tmp/mp.b of="$MP_DEV" bs=1048576 seek=$((MP_AT + h)) oflag=direct conv=notrunc,fsync 2> /tmp/mp.eb &
    wb=$!
    wait $wa
    ra=$?
    wait $wb
    rb=$?
    if [ "$ra" != 0 ] || [ "$rb" != 0 ]; then
        echo "a write failed (exit $ra, $rb): $(tail -1 /tmp/mp.ea) $(tail -1 /tmp/mp.eb)"
        return 1
    fi
    timeout -s KILL 150 dd if="$MP_DEV" of=/tmp/mp.ra bs=1048576 skip=$MP_AT count=$h iflag=direct 2> /tmp/mp.ea &
    wa=$!
    timeout -s KILL 150 dd if="$MP_DEV" of=/tmp/mp.rb bs=1048576 skip=$((MP_AT + h)) count=$h iflag=direct 2> /tmp/mp.eb &
    wb=$!
    wait $wa
    ra=$?
    wait $wb
    rb=$?
    got=$(cat /tmp/mp.ra /tmp/mp.rb | md5sum | cut -d' ' -f1)
    rm -f /tmp/mp.a /tmp/mp.b /tmp/mp.ra /tmp/mp.rb
    if [ "$ra" != 0 ] || [ "$rb" != 0 ]; then
        echo "a read failed (exit $ra, $rb): $(tail -1 /tmp/mp.ea) $(tail -1 /tmp/mp.eb)"
        return 1
    fi
    if [ "$got" != "$want" ]; then
        echo "read back md5 $got, wrote $want"
        return 1
    fi
    MP_WANT=$want
}
# mp_passes SECS COND N: passes until N passes that started with COND true are done, or SECS
# pass. Sets MP_N (passes), MP_SLOW (the slowest, cs), MP_BAD (why a pass failed).
mp_passes() {
    until=$(($(now_cs) + $1 * 100))
    cond=$2 need=$3 held=0
    MP_N=0 MP_SLOW=0 MP_BAD=""
    while [ "$(now_cs)" -lt "$until" ]; do
        before=0
        $cond && before=1
        t=$(now_cs)
        if ! mp_pass > /tmp/mp.why; then
            MP_BAD="pass $((MP_N + 1)): $(cat /tmp/mp.why)"
            return 1
        fi
        dt=$(($(now_cs) - t))
        [ "$dt" -gt "$MP_SLOW" ] && MP_SLOW=$dt
        MP_N=$((MP_N + 1))
        [ "$before" = 1 ] && held=$((held + 1))
        [ "$held" -ge "$need" ] && return 0
    done
    return 1
}

# mp_show: the state of the map and its paths, to the console.
mp_show() {
    show "MULTIPATH $1" multipath -ll "$MP_NAME"
    show "MULTIPATH $1" dmsetup status "$MP_NAME"
}
multipath_cases() {
    # mp_discovery: the node records SendTargets makes are replaced by one per path below (the
    # target reports its own addresses, and PORTAL2 must go through the proxy).
    start
    timeout -s KILL 30 iscsiadm -m discovery -t sendtargets -p "$PORTAL" > /tmp/disc.out 2> /tmp/disc.err
    rc=$?
    show DISCOVERY cat /tmp/disc.out /tmp/disc.err
    tpgts=$(awk -v q="$IQN" '$2 == q { sub(/^.*,/, "", $1); print $1 }' /tmp/disc.out | sort -u | tr '\n' ' ')
    tpgts=${tpgts% }
    if [ "$rc" = 0 ] && [ "$(echo "$tpgts" | wc -w)" = 2 ]; then
        result mp_discovery PASS "$IQN in portal groups $tpgts: $(awk -v q="$IQN" '$2 == q { print $1 }' /tmp/disc.out | tr '\n' ' ')"
    else
        result mp_discovery FAIL "SendTargets (exit $rc) lists $IQN in portal groups '$tpgts', not two"
        return
    fi
    iscsiadm -m node -o delete > /dev/null 2>&1

    # mp_login: a session through each portal. Failing over must not wait long: a lost session
    # fails its commands after 5 s (replacement_timeout), and NOP-Outs every 2 s find a silent
    # link within 5 s; a login that gets no answer is given up after 5 s and tried again.
    start
    ok=1
    for p in "$PORTAL" "$PORTAL2"; do
        iscsiadm -m node -o new -T "$IQN" -p "$p" > /dev/null 2>&1
        for kv in node.session.timeo.replacement_timeout=5 'node.conn[0].timeo.noop_out_interval=2' \
            'node.conn[0].timeo.noop_out_timeout=5' 'node.conn[0].timeo.login_timeout=5'; do
            iscsiadm -m node -T "$IQN" -p "$p" -o update -n "${kv%%=*}" -v "${kv#*=}" > /dev/null
        done
        if ! timeout -s KILL 45 iscsiadm -m node -T "$IQN" -p "$p" --login > /tmp/login.out 2>&1; then
            show LOGIN cat /tmp/login.out
            ok=0
            why="login through $p: $(grep -i 'error\|fail' /tmp/login.out | tail -1)"
            break
        fi
    done
    if [ "$ok" = 1 ] && ! wait_until "$DISK_WAIT" mp_two_disks; then
        ok=0
        why="$(mp_paths | wc -l) disk(s) for LUN $LUN within ${DISK_WAIT}s, not 2"
    fi
    if [ "$ok" = 1 ]; then
        mp_paths > /tmp/mp.paths
        MP_D1=$(awk -v p="$PORTAL_PORT" '$2 == p { print $1 }' /tmp/mp.paths)
        MP_D2=$(awk -v p="${PORTAL2##*:}" '$2 == p { print $1 }' /tmp/mp.paths)
        w1=$(cat "/sys/block/$MP_D1/device/wwid" 2>/dev/null)
        w2=$(cat "/sys/block/$MP_D2/device/wwid" 2>/dev/null)
        if [ -z "$MP_D1" ] || [ -z "$MP_D2" ]; then
            ok=0
            why="disks and ports: $(tr '\n' ' ' < /tmp/mp.paths)(want one through $PORTAL_PORT, one through ${PORTAL2##*:})"
        elif [ -z "$w1" ] || [ "$w1" != "$w2" ]; then
            ok=0
            why="$MP_D1 and $MP_D2 have WWIDs '$w1' and '$w2'"
        fi
    fi
    iscsiadm -m session -P 3 > /tmp/session.out 2>&1
    show SESSION cat /tmp/session.out
    if [ "$ok" = 1 ]; then
        info "mp_paths $MP_D1 through $PORTAL, $MP_D2 through $PORTAL2 (the cut one)"
        result mp_login PASS "/dev/$MP_D1 through $PORTAL, /dev/$MP_D2 through $PORTAL2, both $w1"
    else
        show SCSIDEVS ls -l /sys/class/scsi_device/
        result mp_login FAIL "$why"
        return
    fi

    # mp_map: multipathd, told about both disks, makes one map of them.
    start
    mkdir -p /etc/multipath /run/multipath
    cat > /etc/multipath.conf << 'CONF'
defaults {
	user_friendly_names no
	find_multipaths no
	uid_attribute ""
	polling_interval 2
	missing_uev_wait_timeout 2
}
devices {
	device {
		vendor "OVERLAYB"
		product ".*"
		path_grouping_policy group_by_prio
		detect_prio no
		prio alua
		hardware_handler "1 alua"
		path_selector "round-robin 0"
		rr_min_io_rq 1
		path_checker tur
		failback immediate
		no_path_retry 10
	}
}
CONF
    export DM_DISABLE_UDEV=1
    multipathd -d -s -v3 > /tmp/multipathd.log 2>&1 &
    mpd_up() { multipathd show daemon > /dev/null 2>&1; }
    mp_map_full() {
        MP_NAME=$(dmsetup ls --target multipath 2>/dev/null | awk 'NR == 1 && $1 != "No" { print $1 }')
        [ -n "$MP_NAME" ] && [ "$(mp_state "$MP_D1")" = A ] && [ "$(mp_state "$MP_D2")" = A ]
    }
    if ! wait_until 20 mpd_up; then
        show MULTIPATHD cat /tmp/multipathd.log
        result mp_map FAIL "multipathd did not answer within 20 s"
        return
    fi
    for d in "$MP_D1" "$MP_D2"; do
        info "multipathd add path $d: $(multipathd add path "$d" 2>&1 | tr '\n' ' ')"
    done
    if ! wait_until 30 mp_map_full; then
        show MULTIPATHD cat /tmp/multipathd.log
        show DMSETUP dmsetup table
        result mp_map FAIL "no map with both paths active within 30 s (map '${MP_NAME}')"
        return
    fi
    minor=$(dmsetup info -c --noheadings -o minor "$MP_NAME" 2>/dev/null | tr -d ' ')
    MP_DEV=/dev/dm-$minor
    # multipathd's checker has to find both paths ready too.
    wait_until 20 mp_both_up
    mp_show map
    table=$(dmsetup table "$MP_NAME")
    c1=$(mp_checker "$MP_D1") c2=$(mp_checker "$MP_D2")
    size=$(($(cat "/sys/block/dm-$minor/size") * 512))
    # The kernel's ALUA handler logs the target port group it found for each disk (VPD 0x83 and
    # REPORT TARGET PORT GROUPS), e.g. "sd 2:0:0:0: alua: port group 01 state A non-preferred".
    for d in "$MP_D1" "$MP_D2"; do
        dmesg | grep "sd $(lun_sdev_of "$d"): alua: " | while read -r l; do info "mp_alua_kernel $d: ${l#*alua: }"; done
    done
    g1=$(alua_group "$MP_D1") g2=$(alua_group "$MP_D2")
    info "mp_map $MP_NAME on $MP_DEV: $table"
    info "mp_alua $MP_D1: group ${g1:-?} $(cat "/sys/block/$MP_D1/device/dh_state") $(cat "/sys/block/$MP_D1/device/access_state" 2>/dev/null); $MP_D2: group ${g2:-?} $(cat "/sys/block/$MP_D2/device/dh_state") $(cat "/sys/block/$MP_D2/device/access_state" 2>/dev/null)"
    info "mp_checker $MP_D1: $c1; $MP_D2: $c2"
    p1=${c1##* } p2=${c2##* }
    ll=$(mp_ll)
    if ! mp_both_up; then
        result mp_map FAIL "multipathd: $MP_D1 '$c1', $MP_D2 '$c2' (want active ready); multipath -ll: $ll active ready running"
    elif [ "$size" != "$EXP_SIZE" ]; then
        result mp_map FAIL "$MP_DEV has $size bytes, the image $EXP_SIZE"
    elif ! echo "$table" | grep -q ' 1 alua '; then
        result mp_map FAIL "no alua hardware handler in the table: $table"
    elif [ -z "$g1" ] || [ -z "$g2" ] || [ "$g1" = "$g2" ]; then
        result mp_map FAIL "the kernel's ALUA port groups: '$g1' ($MP_D1) and '$g2' ($MP_D2), want two different ones"
    elif [ "$p1" != "$p2" ] || [ "${p1:-0}" -le 0 ]; then
        result mp_map FAIL "alua priorities $p1 ($MP_D1) and $p2 ($MP_D2), want equal and positive (both active/optimized)"
    else
        result mp_map PASS "$MP_NAME ($MP_DEV, $size bytes): multipath -ll shows $ll paths active ready running, alua handler, port groups $g1 and $g2, prio $p1"
    fi

    # mp_io: both paths carry the workload (round-robin, one request each).
    start
    a1=$(mp_ios "$MP_D1") a2=$(mp_ios "$MP_D2")
    if ! mp_pass > /tmp/mp.why; then
        result mp_io FAIL "$(cat /tmp/mp.why)"
        return
    fi
    n1=$(($(mp_ios "$MP_D1") - a1)) n2=$(($(mp_ios "$MP_D2") - a2))
    if [ "$n1" -gt 0 ] && [ "$n2" -gt 0 ]; then
        result mp_io PASS "$MP_MIB MiB written and read back through $MP_DEV, md5 $MP_WANT; requests: $MP_D1 $n1, $MP_D2 $n2"
    else
        result mp_io FAIL "requests: $MP_D1 $n1, $MP_D2 $n2: not both paths used"
    fi

    # mp_cut: the host cuts PORTAL2's link; the workload goes on.
    start
    a1=$(mp_ios "$MP_D1") a2=$(mp_ios "$MP_D2")
    say "VMI: mp-cut"
    mp_passes 60 mp_cut_failed "$MP_ONE_PATH"
    rc=$?
    n1=$(($(mp_ios "$MP_D1") - a1)) n2=$(($(mp_ios "$MP_D2") - a2))
    # The kernel fails a path when I/O on it fails ("Failing path MAJ:MIN" after "I/O error, dev
    # sdX"); multipathd's checker may fail it first, without an I/O error.
    failing=$(dmesg | grep -c 'multipath: .*Failing path')
    path_errors=$(dmesg | grep -c "I/O error, dev $MP_D2,")
    dm_errors=$(dmesg | grep -cE 'dm-[0-9]+.*error|I/O error, dev dm-')
    s1=$(mp_state "$MP_D1")
    mp_show cut
    info "mp_cut $MP_N passes, slowest $(secs "$MP_SLOW")s; requests $MP_D1 $n1, $MP_D2 $n2; kernel: $path_errors I/O errors on $MP_D2, $failing 'Failing path', $dm_errors dm I/O errors"
    info "mp_cut paths: $MP_D1 $s1 ($(mp_checker "$MP_D1")), $MP_D2 $(mp_state "$MP_D2") ($(mp_checker "$MP_D2"))"
    if [ -n "$MP_BAD" ]; then
        result mp_cut FAIL "$MP_BAD"
        return
    elif [ "$rc" != 0 ]; then
        result mp_cut FAIL "$MP_D2 not failed, or not $MP_ONE_PATH passes on $MP_D1 alone, within 60 s ($MP_N passes; did the host cut the link?)"
    elif [ "$s1" != A ]; then
        result mp_cut FAIL "$MP_D1, whose link was not cut, is $s1 in the map"
    elif [ "$dm_errors" != 0 ]; then
        result mp_cut FAIL "$dm_errors I/O error line(s) for the dm device in the kernel log"
    else
        result mp_cut PASS "$MP_D2 failed, $MP_N passes with the right data (the slowest $(secs "$MP_SLOW")s), the last $MP_ONE_PATH on $MP_D1 alone"
    fi

    # mp_restore: the host restores the link; the path must come back and carry I/O again.
    start
    say "VMI: mp-restore"
    mp_passes 60 mp_both_up 1
    rc=$?
    t_back=$(secs $(($(now_cs) - CASE_T0)))
    if [ -n "$MP_BAD" ]; then
        result mp_restore FAIL "$MP_BAD"
        return
    elif [ "$rc" != 0 ]; then
        mp_show restore
        result mp_restore FAIL "$MP_D2 not back within 60 s: $(mp_state "$MP_D2") ($(mp_checker "$MP_D2")), multipath -ll: $(mp_ll) active ready running"
    else
        a1=$(mp_ios "$MP_D1") a2=$(mp_ios "$MP_D2")
        if ! mp_pass > /tmp/mp.why; then
            result mp_restore FAIL "after the path came back: $(cat /tmp/mp.why)"
            return
        fi
        n1=$(($(mp_ios "$MP_D1") - a1)) n2=$(($(mp_ios "$MP_D2") - a2))
        mp_show restored
        info "mp_restore back after ${t_back}s ($MP_N passes meanwhile); last pass requests $MP_D1 $n1, $MP_D2 $n2; kernel: $(dmesg | grep -c 'multipath: .*Reinstating path') 'Reinstating path'"
        if [ "$n1" -gt 0 ] && [ "$n2" -gt 0 ]; then
            result mp_restore PASS "$MP_D2 active ready again after ${t_back}s; a pass through both paths read back right"
        else
            result mp_restore FAIL "$MP_D2 is back, but the last pass made requests $MP_D1 $n1, $MP_D2 $n2"
        fi
    fi
    # What run.sh compares with the image after the run.
    info "mp_final $MP_AT $MP_MIB $MP_WANT"

    # mp_logout: the map goes, then both sessions.
    start
    multipathd del map "$MP_NAME" > /tmp/mp.del 2>&1
    multipathd shutdown > /dev/null 2>&1
    timeout -s KILL 30 iscsiadm -m node -U all > /tmp/logout.out 2>&1
    left=$(dmsetup ls --target multipath 2>/dev/null | grep -vc '^No devices')
    iscsiadm -m session > /dev/null 2>&1
    src=$?
    show MULTIPATHD cat /tmp/multipathd.log
    if [ "$left" = 0 ] && [ "$src" = 21 ]; then
        result mp_logout PASS "map removed, both sessions closed"
    else
        show LOGOUT cat /tmp/mp.del /tmp/logout.out
        result mp_logout FAIL "$left map(s) left; iscsiadm -m session exit $src (21: no session)"
    fi
}
# lun_sdev_of DEV: the H:C:T:L of disk DEV.
lun_sdev_of() { d=$(readlink -f "/sys/block/$1/device"); echo "${d##*/}"; }
# alua_group DEV: the last target port group (hex, as the kernel printed it after RTPG) of DEV.
alua_group() {
    dmesg | sed -n "s/^.*sd $(lun_sdev_of "$1"): alua: port group \([0-9a-f]*\) state .*$/\1/p" | tail -1
}
if [ "${MULTIPATH:-0}" = 1 ]; then
    multipath_cases
    [ "$SCSI_LOG" = 1 ] && scsi_log_report
    finish
fi

# --- discovery ----------------------------------------------------------------------------------
# Up to 3 tries within 30 s: a refused connection fails a try in about a second, a target that
# accepts and never answers would hold iscsiadm for its login timeouts, so `timeout` cuts it off.
start
ok=0 try=0
disc_deadline=$(($(now_cs) + 3000))
while [ "$try" -lt 3 ]; do
    try=$((try + 1))
    left=$(((disc_deadline - $(now_cs)) / 100))
    [ "$left" -ge 1 ] || break
    timeout -s KILL "$left" iscsiadm -m discovery -t sendtargets -p "$PORTAL" > /tmp/disc.out 2> /tmp/disc.err
    rc=$?
    if [ "$rc" = 0 ]; then
        ok=1
        break
    fi
    [ "$rc" = 137 ] && echo "no SendTargets answer within 30 s (iscsiadm killed)" >> /tmp/disc.err
done
show DISCOVERY cat /tmp/disc.out /tmp/disc.err
# Lines are "ADDRESS:PORT,TPGT IQN"; the IQN compared as a string, not as a pattern.
reported=$(awk -v q="$IQN" '$2 == q { print $1; exit }' /tmp/disc.out)
if [ "$ok" = 1 ] && [ -n "$reported" ]; then
    info "target_address_reported $reported"
    result discovery PASS "$IQN at $reported (tries: $try)"
elif [ "$ok" = 1 ]; then
    result discovery FAIL "$IQN not in SendTargets reply: $(tr '\n' ' ' < /tmp/disc.out)"
else
    # Nothing answered SendTargets: a login to the same portal could only time out (30 s).
    result discovery FAIL "iscsiadm: $(tail -1 /tmp/disc.err)"
    finish
fi

# The reported address is the target's own view (often 127.0.0.1, the guest's loopback here), so
# the node is created at the discovery portal instead.
iscsiadm -m node -o new -T "$IQN" -p "$PORTAL" > /dev/null 2>&1
setnode() { iscsiadm -m node -T "$IQN" -p "$PORTAL" -o update -n "$1" -v "$2" > /dev/null; }
setnode node.conn[0].iscsi.HeaderDigest "$HEADER_DIGEST"
setnode node.conn[0].iscsi.DataDigest "$DATA_DIGEST"
if [ -n "$CHAP_USER" ]; then
    setnode node.session.auth.authmethod CHAP
    setnode node.session.auth.username "$CHAP_USER"
    setnode node.session.auth.password "$CHAP_SECRET"
fi
# Mutual CHAP: the target must prove it knows this secret too.
if [ -n "$CHAP_IN_USER" ]; then
    setnode node.session.auth.username_in "$CHAP_IN_USER"
    setnode node.session.auth.password_in "$CHAP_IN_SECRET"
fi

DISK=""
# lun_sdev N: prints the H:C:T:L of LUN N's SCSI device on an iSCSI host (there is one session).
lun_sdev() {
    for d in /sys/class/scsi_device/*:*:*:"$1"; do
        [ -e "$d" ] || continue
        h=${d##*/}
        h=${h%%:*}
        [ -e "/sys/class/iscsi_host/host$h" ] || continue
        echo "${d##*/}"
        return 0
    done
    return 1
}
# lun_disk N: prints the sdX of LUN N on an iSCSI host, once sd has read its capacity.
lun_disk() {
    sdev=$(lun_sdev "$1") || return 1
    for b in "/sys/class/scsi_device/$sdev"/device/block/*; do
        [ -e "$b" ] || continue
        name=${b##*/}
        if [ -b "/dev/$name" ] && [ "$(cat "$b/size")" != 0 ]; then
            echo "$name"
            return 0
        fi
    done
    return 1
}
# The sdX of the expected LUN.
find_disk() { DISK=$(lun_disk "$LUN"); }

# login CASE: logs in, then waits for the disk. Leaves DISK set on success.
login() {
    start
    DISK=""
    # iscsid retries a login that times out (2 x 15 s); 45 s bounds a target that never answers.
    if ! timeout -s KILL 45 iscsiadm -m node -T "$IQN" -p "$PORTAL" --login > /tmp/login.out 2>&1; then
        show LOGIN cat /tmp/login.out
        why=$(grep -i 'error\|fail' /tmp/login.out | tail -1)
        result "$1" FAIL "${why:-no login answer within 45 s}"
        return 1
    fi
    result "$1" PASS "session up"
    start
    if wait_until "$DISK_WAIT" find_disk; then
        result "$1_disk" PASS "/dev/$DISK is LUN $LUN"
        return 0
    fi
    show SCSIDEVS ls -l /sys/class/scsi_device/
    result "$1_disk" FAIL "no disk for LUN $LUN within ${DISK_WAIT}s"
    return 1
}

logout() {
    start
    if timeout -s KILL 30 iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout > /tmp/logout.out 2>&1; then
        result "$1" PASS "session closed"
    else
        show LOGOUT cat /tmp/logout.out
        result "$1" FAIL "$(tail -1 /tmp/logout.out)"
    fi
    DISK=""
}

login login || finish

# --- negotiated parameters ----------------------------------------------------------------------
start
iscsiadm -m session -P 3 > /tmp/session.out 2>&1
show SESSION cat /tmp/session.out
hd=$(awk '/HeaderDigest:/ {print $2; exit}' /tmp/session.out)
dd_=$(awk '/DataDigest:/ {print $2; exit}' /tmp/session.out)
for k in HeaderDigest DataDigest MaxRecvDataSegmentLength MaxXmitDataSegmentLength \
    FirstBurstLength MaxBurstLength ImmediateData InitialR2T MaxOutstandingR2T; do
    info "negotiated $k $(awk -v k="$k:" '$1 == k {print $2; exit}' /tmp/session.out)"
done
want_hd=${HEADER_DIGEST%%,*}
want_dd=${DATA_DIGEST%%,*}
# With "CRC32C,None" offered either answer is legal; with one value only that one is.
if { [ "$hd" = "$want_hd" ] || [ "$HEADER_DIGEST" = "CRC32C,None" ] || [ "$HEADER_DIGEST" = "None,CRC32C" ]; } &&
    { [ "$dd_" = "$want_dd" ] || [ "$DATA_DIGEST" = "CRC32C,None" ] || [ "$DATA_DIGEST" = "None,CRC32C" ]; }; then
    result session_params PASS "HeaderDigest=$hd DataDigest=$dd_"
else
    result session_params FAIL "HeaderDigest=$hd DataDigest=$dd_ (offered $HEADER_DIGEST / $DATA_DIGEST)"
fi

# --- size and first MiB -------------------------------------------------------------------------
start
size=$(($(cat "/sys/block/$DISK/size") * 512))
lbs=$(cat "/sys/block/$DISK/queue/logical_block_size")
if [ "$size" = "$EXP_SIZE" ]; then
    result size PASS "$size bytes, logical block $lbs"
else
    result size FAIL "disk has $size bytes, image $EXP_SIZE"
fi

# One O_DIRECT read of 1 MiB (so the page cache cannot answer) into memory, hashed afterwards:
# a hash running while the data arrives slows TCG's network a lot (see --full-md5 in run.sh).
read_first_mib() {
    dd if="/dev/$DISK" of=/tmp/first bs=1048576 count=1 iflag=direct 2>/dev/null ||
        { echo 3 > /proc/sys/vm/drop_caches; dd if="/dev/$DISK" of=/tmp/first bs=1048576 count=1 2>/dev/null; }
    cat /tmp/first
    rm -f /tmp/first
}
start
# 32 hex digits: md5; 64: sha256 (the fixtures' READMEs give sha256).
if [ "${#EXP_1M}" = 64 ]; then hash=sha256sum; else hash=md5sum; fi
got=$(read_first_mib | $hash | cut -d' ' -f1)
if [ "$got" = "$EXP_1M" ]; then
    result first_mib PASS "${hash%sum} $got"
else
    result first_mib FAIL "${hash%sum}: disk $got, expected $EXP_1M"
fi

# --- timed reads (--read-loop N): N O_DIRECT reads of 1 MiB, one dd each, stepping 1 MiB through the
# disk; every read of 1 s or more is reported with its index and time (a diagnostic for stalls).
if [ "${READ_LOOP:-0}" -gt 0 ]; then
    start
    mibs=$((size / 1048576))
    i=0 slow=0 max=0 failed_reads=0
    while [ "$i" -lt "$READ_LOOP" ]; do
        t0=$(now_cs)
        dd if="/dev/$DISK" of=/dev/null bs=1048576 skip=$((i % mibs)) count=1 iflag=direct 2>/dev/null ||
            failed_reads=$((failed_reads + 1))
        dt=$(($(now_cs) - t0))
        [ "$dt" -gt "$max" ] && max=$dt
        if [ "$dt" -ge 100 ]; then
            slow=$((slow + 1))
            info "slow_read $i $(secs "$dt")s at uptime $(secs "$(now_cs)")s"
        fi
        i=$((i + 1))
    done
    summary="$READ_LOOP reads of 1 MiB, $slow took 1 s or more, slowest $(secs "$max")s"
    if [ "$failed_reads" = 0 ]; then
        result read_loop PASS "$summary"
    else
        result read_loop FAIL "$failed_reads reads failed; $summary"
    fi
fi

# --- raw writes: 4 x 1 MiB O_DIRECT at the end of the disk, read back, then the old data restored --
# (1 MiB writes are what make the initiator use R2Ts and Data-Out sequences.)
# direct_region OP FILE: reads (OP=read) or writes (OP=write) the region with O_DIRECT.
direct_region() {
    if [ "$1" = read ]; then
        dd if="/dev/$DISK" of="$2" bs=1048576 skip="$RAW_AT" count=4 iflag=direct 2>/dev/null
    else
        dd if="$2" of="/dev/$DISK" bs=1048576 seek="$RAW_AT" count=4 oflag=direct conv=fsync,notrunc 2>/dev/null
    fi
}
if [ "$RAW_WRITE" = 1 ]; then
    start
    RAW_AT=$((size / 1048576 - 4))
    if [ "$RAW_AT" -lt 1 ]; then
        result raw_write FAIL "disk smaller than 5 MiB"
    elif ! direct_region read /tmp/orig; then
        result raw_write FAIL "reading the original data failed"
    else
        dd if=/dev/urandom of=/tmp/pat bs=1048576 count=4 2>/dev/null
        want=$(md5sum < /tmp/pat | cut -d' ' -f1)
        if direct_region write /tmp/pat && echo 3 > /proc/sys/vm/drop_caches && direct_region read /tmp/back &&
            [ "$(md5sum < /tmp/back | cut -d' ' -f1)" = "$want" ]; then
            result raw_write PASS "4 MiB at MiB $RAW_AT written and read back"
        else
            result raw_write FAIL "4 MiB at MiB $RAW_AT: readback differs or I/O failed"
        fi
        start
        want=$(md5sum < /tmp/orig | cut -d' ' -f1)
        if direct_region write /tmp/orig && direct_region read /tmp/back &&
            [ "$(md5sum < /tmp/back | cut -d' ' -f1)" = "$want" ]; then
            result raw_restore PASS "original data back"
        else
            result raw_restore FAIL "could not restore MiB $RAW_AT..$((RAW_AT + 3))"
        fi
        rm -f /tmp/orig /tmp/pat /tmp/back
    fi
fi

if [ "$FS" = auto ]; then
    FS=none
    magic=$(dd if="/dev/$DISK" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
    [ "$magic" = 53ef ] && FS=ext4
    info "fs $FS (magic at byte 1080: $magic)"
fi

# The whole disk, in 8 MiB chunks read into memory first (see run.sh's --full-md5).
if [ -s /etc/vmi.chunks ]; then
    start
    bad=""
    n=0
    while read -r i sum; do
        dd if="/dev/$DISK" of=/tmp/chunk bs=1048576 skip=$((i * 8)) count=8 iflag=direct 2>/dev/null
        got=$(md5sum < /tmp/chunk | cut -d' ' -f1)
        rm -f /tmp/chunk
        n=$((n + 1))
        if [ "$got" != "$sum" ]; then
            bad="$bad $i"
            info "chunk_mismatch $i (bytes from $((i * 8)) MiB) disk=$got image=$sum"
        fi
    done < /etc/vmi.chunks
    if [ -z "$bad" ]; then
        result md5_full PASS "$n chunks of 8 MiB match"
    else
        result md5_full FAIL "chunks differ:$bad"
    fi
fi

# --- target restart during a read: the host kills the target (-9) once it sees "VMI: reading" and
# starts it again on the same port; the session must recover by itself (iscsid logs in again within
# replacement_timeout) and the read must complete with the right data. The whole disk is read in
# passes until a pass saw the connection drop; each pass overwrites the same in-memory file.
conn_errors() { dmesg | grep -c 'detected conn error'; }
if [ "$RESTART_READ" = 1 ]; then
    start
    say "VMI: reading"
    passes=0 hit=0 ioerr=""
    restart_deadline=$(($(now_cs) + 9000))
    while [ "$(now_cs)" -lt "$restart_deadline" ]; do
        before=$(conn_errors)
        if ! dd if="/dev/$DISK" of=/tmp/rd bs=1048576 iflag=direct 2> /tmp/rd.err; then
            ioerr=$(tail -1 /tmp/rd.err)
            break
        fi
        passes=$((passes + 1))
        if [ "$(conn_errors)" -gt "$before" ]; then
            hit=1
            break
        fi
    done
    show RESTART sh -c "dmesg | grep -i 'connection\|session' | tail -20"
    state=$(iscsiadm -m session -P 1 2>/dev/null | awk -F': ' '/iSCSI Session State/ { print $2; exit }')
    if [ -n "$ioerr" ]; then
        result restart_read FAIL "read failed after $passes passes: $ioerr"
    elif [ "$hit" = 0 ]; then
        result restart_read FAIL "no connection drop seen in $passes passes (the host did not kill the target?)"
    else
        got=$(md5sum < /tmp/rd | cut -d' ' -f1)
        if [ "$got" = "$EXP_FULL_MD5" ]; then
            result restart_read PASS "pass $passes across the restart read the whole disk intact (md5 $got), session $state"
        else
            result restart_read FAIL "pass $passes across the restart: md5 $got, expected $EXP_FULL_MD5"
        fi
    fi
    rm -f /tmp/rd
fi

# --- ext4 ---------------------------------------------------------------------------------------
# check_files [LIST]: every "md5  path" line of LIST (default /etc/vmi.files) matches under /mnt.
# Prints a reason.
check_files() {
    bad=0 n=0
    while read -r sum path; do
        [ -n "$path" ] || continue
        n=$((n + 1))
        got=$(md5sum "/mnt/$path" 2>/dev/null | cut -d' ' -f1)
        if [ "$got" != "$sum" ]; then
            bad=$((bad + 1))
            info "file_mismatch $path disk=${got:-unreadable} image=$sum"
        fi
    done < "${1:-/etc/vmi.files}"
    echo "$n files, $bad mismatches"
    [ "$bad" = 0 ]
}

if [ "$FS" = ext4 ]; then
    start
    if mount -t ext4 -o ro "/dev/$DISK" /mnt 2> /tmp/mount.err; then
        ls -laR /mnt > /tmp/ls.out 2>&1
        show LS sed -n 1,500p /tmp/ls.out
        list=$(cd /mnt && find . -type f | sort | md5sum | cut -d' ' -f1)
        if [ -z "$EXP_LIST_MD5" ] || [ "$list" = "$EXP_LIST_MD5" ]; then
            result ext4_ro_mount PASS "mounted, $(cd /mnt && find . -type f | wc -l) files"
        else
            show FILELIST sh -c 'cd /mnt && find . -type f | sort'
            result ext4_ro_mount FAIL "file list differs from the image's"
        fi
        start
        if why=$(check_files); then
            result ext4_files PASS "$why"
        else
            result ext4_files FAIL "$why"
        fi
        umount /mnt
    else
        result ext4_ro_mount FAIL "$(cat /tmp/mount.err)"
    fi
fi

# --- read-write: write files, log out, log in again, read them back ------------------------------
if [ "$RW" = 1 ] && [ "$FS" = ext4 ]; then
    start
    : > /tmp/written
    if mount -t ext4 "/dev/$DISK" /mnt 2> /tmp/mount.err; then
        mkdir -p /mnt/vmi-rw
        dd if=/dev/urandom of=/mnt/vmi-rw/random.bin bs=1024 count="$RW_KIB" 2>/dev/null
        echo "written by the overlaybd-target VM test at uptime $(now_cs)" > /mnt/vmi-rw/note.txt
        (cd /mnt && md5sum vmi-rw/random.bin vmi-rw/note.txt) > /tmp/written
        sync
        if umount /mnt; then
            while read -r sum path; do info "written $path $sum"; done < /tmp/written
            result rw_write PASS "$RW_KIB KiB + note written, synced, unmounted"
        else
            result rw_write FAIL "umount failed"
        fi
    else
        result rw_write FAIL "rw mount: $(cat /tmp/mount.err)"
    fi
    logout rw_logout
    if login relogin; then
        start
        echo 3 > /proc/sys/vm/drop_caches
        if mount -t ext4 -o ro "/dev/$DISK" /mnt 2> /tmp/mount.err; then
            if [ -s /tmp/written ] && (cd /mnt && md5sum -c -s /tmp/written); then
                result rw_readback PASS "$(wc -l < /tmp/written) files read back after re-login"
            else
                result rw_readback FAIL "content differs after re-login"
            fi
            umount /mnt
        else
            result rw_readback FAIL "mount after re-login: $(cat /tmp/mount.err)"
        fi
    fi
fi

# --- hotplug: a LUN added and force-removed on the host while the session is up -----------------
# The host runs its hooks when it reads "VMI: hotplug-add" and "VMI: hotplug-remove" (run.sh --on).
# Nothing tells the guest when a hook is done, so it does what an administrator of a real host
# would: rescan the session until the new disk shows up, and after the removal, read the disk
# until that fails, then rescan. Every step is bounded.
# rescan: `iscsiadm -m session --rescan` (open-iscsi rescans each device of the session, then asks
# the SCSI host to scan the target: REPORT LUNS, then INQUIRY of every new LUN).
RESCANS=0
rescan() {
    RESCANS=$((RESCANS + 1))
    timeout -s KILL 30 iscsiadm -m session --rescan > /tmp/rescan.out 2>&1 || show RESCAN cat /tmp/rescan.out
}
# hotplug_disk: rescans while the new LUN has no SCSI device; HP_DISK is its sdX once sd attached
# it (sd probes asynchronously, so the device can come a moment after the rescan returned).
hotplug_disk() {
    if ! lun_sdev "$HOTPLUG_LUN" > /dev/null; then
        rescan
        lun_sdev "$HOTPLUG_LUN" > /dev/null || { sleep 1; return 1; }
    fi
    HP_DISK=$(lun_disk "$HOTPLUG_LUN")
}
# The kernel's warning for UNIT ATTENTION 3F/0E REPORTED LUNS DATA HAS CHANGED, once per sense.
# Reported as INFO only: a REPORT LUNS that comes first withdraws the UA (SPC-4), and whether the
# rescan's REPORT LUNS or a command to LUN 0 comes first after the change is a race.
lun_change_warnings() { dmesg | grep -c 'LUN assignments on this target have changed'; }
if [ "$HOTPLUG" = 1 ]; then
    start
    # LUN 0 must read the same after the removal; its first MiB now is the reference.
    lun0_before=$(read_first_mib | md5sum | cut -d' ' -f1)
    say "VMI: hotplug-add"
    HP_DISK=""
    if ! wait_until 30 hotplug_disk; then
        show SCSIDEVS ls -l /sys/class/scsi_device/
        result hotplug_add FAIL "no disk for LUN $HOTPLUG_LUN within 30 s ($RESCANS rescans)"
    elif ! mount -t ext4 -o ro "/dev/$HP_DISK" /mnt 2> /tmp/mount.err; then
        result hotplug_add FAIL "LUN $HOTPLUG_LUN is /dev/$HP_DISK, mount: $(cat /tmp/mount.err)"
    else
        marker=$(md5sum "/mnt/$HOTPLUG_MARKER" 2>/dev/null | cut -d' ' -f1)
        list=$(cd /mnt && find . -type f | sort | md5sum | cut -d' ' -f1)
        why=$(check_files /etc/vmi.hotplug.files)
        files_ok=$?
        umount /mnt
        info "hotplug_ua_3f0e_warnings_after_add $(lun_change_warnings)"
        if [ "$marker" != "$HOTPLUG_MARKER_MD5" ]; then
            result hotplug_add FAIL "/dev/$HP_DISK: /$HOTPLUG_MARKER md5 ${marker:-missing}, expected $HOTPLUG_MARKER_MD5"
        elif [ "$list" != "$HOTPLUG_LIST_MD5" ] || [ "$files_ok" != 0 ]; then
            result hotplug_add FAIL "/dev/$HP_DISK: marker right, but the files differ from the image's ($why)"
        else
            result hotplug_add PASS "LUN $HOTPLUG_LUN is /dev/$HP_DISK after $RESCANS rescans; marker md5 $marker, $why"
        fi
    fi

    start
    if [ -z "$HP_DISK" ]; then
        result hotplug_remove FAIL "no disk was added"
    else
        hp_sdev=$(lun_sdev "$HOTPLUG_LUN")
        say "VMI: hotplug-remove"
        # Until the host removed the LUN a read succeeds; after a forced removal the target answers
        # ILLEGAL REQUEST 25/00, which sd does not retry: the read must fail at once, not hang.
        read_rc=0 reads=0 read_secs=""
        gone_deadline=$(($(now_cs) + 3000))
        while [ "$(now_cs)" -lt "$gone_deadline" ]; do
            reads=$((reads + 1))
            t0=$(now_cs)
            timeout -s KILL 20 dd if="/dev/$HP_DISK" of=/dev/null bs=4096 count=1 iflag=direct 2> /tmp/hpread.err
            read_rc=$?
            read_secs=$(secs $(($(now_cs) - t0)))
            [ "$read_rc" = 0 ] || break
            sleep 0.5
        done
        info "hotplug_read_after_remove rc=$read_rc after ${read_secs}s (read $reads): $(tail -1 /tmp/hpread.err)"
        # The rescan: does the kernel drop the device whose LUN left the REPORT LUNS list? Two
        # tries: the scan is synchronous (the write to the host's scan file returns when it is
        # done), so a device still there after the second will stay.
        RESCANS=0
        sdev_gone() { [ ! -e "/sys/class/scsi_device/$hp_sdev" ]; }
        how=""
        for _ in 1 2; do
            rescan
            sleep 1
            if sdev_gone; then
                how="removed by the rescan ($RESCANS)"
                break
            fi
        done
        if [ -z "$how" ] && [ -e "/sys/class/scsi_device/$hp_sdev/device/delete" ]; then
            # Fallback, and what Linux 6.1 with open-iscsi 2.1.8 needs (seen in this guest): the
            # kernel's scan adds the LUNs REPORT LUNS lists but never removes those it stops
            # listing; the rescan only revalidates the device (its commands get 25/00, sd sets
            # its capacity to 0). On a real host rescan-scsi-bus.sh -r (sg3-utils), or a udev
            # rule an administrator adds for the kernel's SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED
            # event, deletes it this way.
            show SCSIDEVS ls -l /sys/class/scsi_device/
            echo 1 > "/sys/class/scsi_device/$hp_sdev/device/delete"
            wait_until 10 sdev_gone && how="still there after $RESCANS rescans; deleted through device/delete"
        fi
        info "hotplug_removed ${how:-not removed}"
        info "hotplug_ua_3f0e_warnings_after_remove $(lun_change_warnings)"
        # LUN 0 must still read the same after the removal (a UNIT ATTENTION is retried by sd).
        echo 3 > /proc/sys/vm/drop_caches
        got=$(read_first_mib | md5sum | cut -d' ' -f1)
        now_disk=$(lun_disk "$LUN")
        if [ "$read_rc" = 0 ]; then
            result hotplug_remove FAIL "/dev/$HP_DISK still reads $reads times over 30 s: the LUN was not removed"
        elif [ "$read_rc" = 137 ]; then
            result hotplug_remove FAIL "a read of /dev/$HP_DISK hung for 20 s after the removal"
        elif [ -z "$how" ]; then
            result hotplug_remove FAIL "$hp_sdev (/dev/$HP_DISK) is still there after $RESCANS rescans and device/delete"
        elif [ "$now_disk" != "$DISK" ] || [ "$got" != "$lun0_before" ]; then
            result hotplug_remove FAIL "LUN $LUN afterwards: /dev/$now_disk, first MiB md5 $got; before: /dev/$DISK, $lun0_before"
        else
            result hotplug_remove PASS "a read failed in ${read_secs}s; $hp_sdev $how; LUN $LUN /dev/$DISK first MiB md5 still $got"
        fi
    fi
fi

logout logout

[ "$SCSI_LOG" = 1 ] && scsi_log_report

finish
