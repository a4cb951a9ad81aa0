#!/usr/bin/env bash
# The Linux kernel initiator against our freshly built target, every case, for CI: builds the
# release binary, then for each case starts the target on a scratch ext4 image, runs run.sh (one
# QEMU guest per case) and prints `CASE <name> PASS|FAIL <seconds>s <reason>`. Exits non-zero when
# any case fails. A case also fails when the kernel saw a CHECK CONDITION other than the power-on
# UNIT ATTENTION (with --scsi-log). The image and registry cases serve a 3-layer overlaybd image
# built with the binary's own tools (the latter from a docker-registry on loopback, needs curl and
# Debian's docker-registry). The hotplug case adds and force-removes a LUN with `ctl` while the
# guest is logged in. The multipath case serves the LUN through two portals, the second behind
# fault_proxy --tcp, and cuts and restores that link under multipathd in the guest. The container
# case runs our target and `attach` in the guest against images pushed to a registry on the host.
# See README.md beside this file.
#
# Usage: ci.sh [--bin PATH] [--no-build] [--only CASE[,CASE...]] [--budget SECS] [--net auto|tap|user]
#              [--iscsi-recv softirq|workqueue]
#   --budget SECS   bound for all cases together (default 540): each guest run gets at most 240 s
#                   and what is left; cases that find less than 30 s left fail without running
#   --net tap       run everything (targets, registry, QEMU) in a new network namespace of its own
#                   (unshare --net; root and /dev/net/tun needed), the guest on a tap device whose
#                   host side is 10.0.2.2, where the target listens; the guest then talks to the
#                   host's TCP stack directly. --net user: QEMU's user-mode network (slirp) and the
#                   target on 127.0.0.1. auto (default): tap when it can be set up, else user.
#   --iscsi-recv    how the guest's iscsi_tcp reads (run.sh --iscsi-recv); default softirq (the
#                   kernel's default) with tap, workqueue with user, where softirq reads stall for
#                   ~5 s now and then (README.md, "Slow reads")
# Logs: $VMI_LOGS/<case>/ (default: a new directory under ${TMPDIR:-/tmp}, printed at the end).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin="$(bash "$repo/scripts/target-dir.sh")/release/overlaybd-target"
build=1 only="" budget=540 net=auto iscsi_recv=""
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; build=0; shift ;;
        --no-build) build=0 ;;
        --only) only=",$2,"; shift ;;
        --budget) budget=$2; shift ;;
        --net) net=$2; shift ;;
        --iscsi-recv) iscsi_recv=$2; shift ;;
        *) echo "ci.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$build" = 1 ]; then
    (cd "$repo" && cargo build --release --bin overlaybd-target --example fault_proxy) ||
        { echo "ci.sh: build failed" >&2; exit 1; }
fi
[ -x "$bin" ] || { echo "ci.sh: no target binary at $bin" >&2; exit 2; }
# The container case's fault proxy (conformance/linux-vm/fault_proxy.rs), built beside the binary.
fault_proxy="$(dirname "$bin")/examples/fault_proxy"
# The guest is built (or taken from the cache) once, before the timed cases (and before entering
# a network namespace: it may download packages).
bash "$here/build-guest.sh" --quiet > /dev/null || { echo "ci.sh: build-guest.sh failed" >&2; exit 1; }

# The guest's network (net.sh); with tap this script runs again inside its own network namespace.
# shellcheck source=net.sh
. "$here/net.sh"
vmi_net "$net" "$iscsi_recv" "$0" "${args[@]}" --no-build --bin "$bin" || exit 2
net=$vmi_net addr=$vmi_addr
net_args=("${vmi_run_args[@]}")
echo "ci.sh: network $net (target at $addr), guest iscsi_tcp reads in ${net_args[-1]}"

work=$(mktemp -d "${TMPDIR:-/tmp}/vmi-ci.XXXXXX")
logs=${VMI_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/vmi-ci-logs.XXXXXX")}
mkdir -p "$logs"
port=$((20000 + RANDOM % 40000))
iqn=iqn.2026-11.test:ci
pidfile=$work/target.pid

stop_target() {
    local pid
    pid=$(cat "$pidfile" 2> /dev/null) || return 0
    rm -f "$pidfile"
    kill "$pid" 2> /dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null || true
}
# The registry case's docker-registry, when it runs.
registry_pid=""
stop_registry() {
    [ -n "$registry_pid" ] || return 0
    kill "$registry_pid" 2> /dev/null || true
    wait "$registry_pid" 2> /dev/null || true
    registry_pid=""
}
cleanup() {
    stop_target
    stop_registry
    stop_mp_proxy
    [ -z "${ctr_registry_pid:-}" ] || kill "$ctr_registry_pid" 2> /dev/null || true
    [ -z "${ctr_proxy_pid:-}" ] || kill "$ctr_proxy_pid" 2> /dev/null || true
    [ -z "${ctr_slow_pid:-}" ] || kill "$ctr_slow_pid" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_target ARGS...: starts the binary on the case's port (the same arguments are kept in
# $work/target.args for a restart) and waits until it listens.
start_target() {
    printf '%q ' "$bin" --portal "$addr:$port" "$@" > "$work/target.args"
    # shellcheck disable=SC2046
    bash -c "exec $(cat "$work/target.args")" >> "$work/target.log" 2>&1 &
    echo $! > "$pidfile"
    local up_by=$((SECONDS + 20))
    until (exec 3<> "/dev/tcp/$addr/$port") 2> /dev/null; do
        if ! kill -0 "$(cat "$pidfile")" 2> /dev/null || [ "$SECONDS" -ge "$up_by" ]; then
            echo "ci.sh: the target is not listening on $addr:$port" >&2
            tail -5 "$work/target.log" >&2
            return 1
        fi
        sleep 0.1
    done
}

# The multipath case's TCP fault proxy, in front of the target's second portal.
mp_proxy_pid=""
stop_mp_proxy() {
    [ -n "$mp_proxy_pid" ] || return 0
    kill "$mp_proxy_pid" 2> /dev/null || true
    wait "$mp_proxy_pid" 2> /dev/null || true
    mp_proxy_pid=""
}

# The --on-read hook of the restart case: kill -9 while the guest reads, 2 s down, same port again.
cat > "$work/restart.sh" <<EOF
set -e
sleep 0.5
kill -9 "\$(cat '$pidfile')"
echo "killed at \$(date +%T.%N)"
sleep 2
bash -c "exec \$(cat '$work/target.args')" >> '$work/target.log' 2>&1 &
echo \$! > '$pidfile'
echo "restarted at \$(date +%T.%N) as pid \$!"
EOF

results=()
failed=0
# case_ NAME EXPECT TARGET-ARGS... -- RUN-ARGS...: one guest run against a fresh target and image.
# EXPECT is pass; pass-cached (also something landed in $work/cache, the cacheDir of the
# registry case); pass-crc32c (also both digests negotiated as CRC32C); login-fail (the run must
# pass discovery and fail at login); or discovery-fail (the discovery session's login is refused).
case_() {
    local name=$1 expect=$2 targs=() rargs=() rc=0 why="" t0
    shift 2
    while [ "$1" != -- ]; do targs+=("$1"); shift; done
    shift
    rargs=("$@")
    [ -z "$only" ] || [[ "$only" == *",$name,"* ]] || return 0
    echo "== ci.sh: case $name"
    t0=$(date +%s.%N)
    local left=$((ci_deadline - SECONDS))
    if [ "$left" -lt 30 ]; then
        results+=("CASE $name FAIL 0s not run: the ${budget}s budget is used up")
        failed=$((failed + 1))
        echo "${results[-1]}"
        return 0
    fi
    [ "$left" -le 360 ] || left=360
    bash "$here/make-test-image.sh" "$work/disk.img" 64M > /dev/null
    : > "$work/target.log"
    if ! start_target "${targs[@]}"; then
        why="target did not start"
    else
        bash "$here/run.sh" --portal "$addr:$port" --iqn "$iqn" --lun 0 --image "$work/disk.img" \
            --timeout "$left" --logs "$logs/$name" "${net_args[@]}" "${rargs[@]}" > "$logs/$name.out" 2>&1 || rc=$?
        grep -E '^(RESULT|  INFO (negotiated|not_good|commands))|^run.sh' "$logs/$name.out" || true
        if ! kill -0 "$(cat "$pidfile" 2> /dev/null || echo 0)" 2> /dev/null; then
            why="the target exited during the run"
        elif [[ "$expect" == pass* ]] && [ "$rc" != 0 ]; then
            why="$(grep -c '^RESULT .* FAIL' "$logs/$name.out") checks failed: $(grep -m1 '^RESULT .* FAIL' "$logs/$name.out" | cut -d' ' -f2-)"
        elif [ "$expect" = pass-crc32c ]; then
            grep -q '^RESULT session_params PASS .*HeaderDigest=CRC32C DataDigest=CRC32C' "$logs/$name.out" ||
                why="CRC32C,None offered, but the target did not choose CRC32C for both digests"
        elif [ "$expect" = pass-cached ] && [ -z "$(find "$work/cache" -type f -size +0c 2> /dev/null)" ]; then
            why="nothing landed in the cacheDir: the layers were not read from the registry"
        elif [ "$expect" = discovery-fail ]; then
            grep -q '^RESULT discovery FAIL .*login failure' "$logs/$name.out" ||
                why="expected the discovery login to be refused"
        elif [ "$expect" = login-fail ]; then
            if ! grep -q '^RESULT login FAIL' "$logs/$name.out" || ! grep -q '^RESULT discovery PASS' "$logs/$name.out"; then
                why="expected discovery to pass and login to be refused"
            fi
        fi
        # Only the power-on/reset UNIT ATTENTION is an acceptable CHECK CONDITION in normal use.
        local bad
        # The restart case also sees commands the kernel failed itself while the connection was
        # down (host=DID_TRANSPORT_*, retried after the reconnect); those are not our answers.
        # So does the multipath case, for the commands on the path whose link was cut.
        # The hotplug case changes the LUN inventory on purpose: UNIT ATTENTION 3F/0E REPORTED
        # LUNS DATA HAS CHANGED after the add and the removal, and ILLEGAL REQUEST 25/00 LOGICAL
        # UNIT NOT SUPPORTED for commands to the removed LUN (its number, $hp_lun, only).
        bad=$(grep 'INFO not_good' "$logs/$name.out" | grep -v 'Unit Attention.*Power on, reset' |
            { { [ "$name" = restart ] || [ "$name" = multipath ]; } && grep CHECK_CONDITION || cat; } |
            { [ "$name" = hotplug ] && grep -v -e 'Unit Attention.*Reported luns data has changed' \
                -e "lun=$hp_lun .*Illegal Request.*Logical unit not supported" || cat; } || true)
        [ -z "$bad" ] || why="${why:+$why; }unexpected not-GOOD status: $(echo "$bad" | head -1 | sed 's/^ *INFO not_good //')"
    fi
    stop_target
    cp "$work/target.log" "$logs/$name.target.log"
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ -z "$why" ]; then
        results+=("CASE $name PASS ${secs}s")
    else
        results+=("CASE $name FAIL ${secs}s $why")
        failed=$((failed + 1))
    fi
    echo "${results[-1]}"
}

disk=$work/disk.img
chap_conf=$work/chap.toml
cat > "$chap_conf" <<EOF
[[targets]]
name = "$iqn"
allowed_initiators = ["iqn.2026-11.test.vm-initiator:guest"]
chap = { user = "vm-guest", secret = "guest-secret-12" }
mutual_chap = { user = "vm-target", secret = "target-secret-34" }
luns = [{ backing = "file:$disk" }]
EOF
chap=(--chap-user vm-guest --chap-secret guest-secret-12)
mutual=(--chap-in-user vm-target --chap-in-secret target-secret-34)

# selected NAME: whether the case runs (--only).
selected() { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }

# The image and registry cases serve a 3-layer overlaybd image built with our own tools from
# trees that add, change and delete files; run.sh takes its expectations (size, first MiB, the
# file list and hashes) from the final config exported to a raw file. The deleted file must be
# absent in the guest: the guest compares the list of every regular file, not just the hashes.
img=$work/image
build_layers() {
    mkdir -p "$img/a/etc" "$img/a/usr/lib"
    echo "layer one" > "$img/a/etc/changed.txt"
    echo "kept from layer one" > "$img/a/etc/kept.txt"
    echo "deleted by layer three" > "$img/a/etc/deleted.txt"
    head -c 300000 /dev/urandom > "$img/a/usr/lib/blob.bin"
    cp -a "$img/a" "$img/b"
    echo "changed by layer two" > "$img/b/etc/changed.txt"
    head -c 70000 /dev/urandom > "$img/b/usr/lib/added.bin"
    cp -a "$img/b" "$img/c"
    rm "$img/c/etc/deleted.txt"
    "$bin" build -z --size 64M "$img/a" "$img/l1.obd" "$img/c1.json" &&
        "$bin" build -z --base "$img/c1.json" "$img/b" "$img/l2.obd" "$img/c2.json" &&
        "$bin" build -z --base "$img/c2.json" "$img/c" "$img/l3.obd" "$img/c3.json" &&
        "$bin" export "$img/c3.json" "$img/final.raw"
}
if selected image || selected registry; then
    build_layers > "$work/build.log" 2>&1 || { cat "$work/build.log" >&2; echo "ci.sh: building the image failed" >&2; exit 1; }
fi

# The registry case: the same layers pushed to a docker-registry on loopback (temporary storage)
# that requires htpasswd Basic auth, and a config whose lowers have only digest and size. The
# target gets what overlaybd gets: --overlaybd-config naming an overlaybd.json whose
# credentialConfig points at a cred.json (Docker-config "auths", keyed by registry/repository),
# and whose cacheConfig.cacheDir is where the fetched blocks land.
reg_cfg=$work/registry.json
reg_user=ci-puller reg_pass=pull-Secret-73
obd_cfg=$work/overlaybd.json
# bcrypt_hash PASSWORD: the bcrypt hash docker-registry's htpasswd file needs.
bcrypt_hash() {
    if command -v htpasswd > /dev/null; then
        htpasswd -nbB -C 5 x "$1" | cut -d: -f2- | head -1
    else
        python3 -W ignore -c 'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32)))' "$1"
    fi
}
# http_code ARGS...: the status of a curl request (000 when nothing answered).
http_code() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
start_registry() {
    local rport=$((20000 + RANDOM % 40000)) repo=ci/image base loc d lowers="" l hash auth
    [ "$rport" != "$port" ] || rport=$((rport + 1))
    base=http://127.0.0.1:$rport
    hash=$(bcrypt_hash "$reg_pass")
    [[ "$hash" == "\$2"* ]] || { echo "ci.sh: no bcrypt (htpasswd from apache2-utils, or python3's crypt)" >&2; return 1; }
    echo "$reg_user:$hash" > "$work/htpasswd"
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\nauth:\n  htpasswd:\n    realm: ci\n    path: %s\n' \
        "$work/registry" "$rport" "$work/htpasswd" > "$work/registry.yml"
    docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
    registry_pid=$!
    local up_by=$((SECONDS + 20))
    until [ "$(http_code "$base/v2/")" != 000 ]; do
        kill -0 "$registry_pid" 2> /dev/null && [ "$SECONDS" -lt "$up_by" ] || return 1
        sleep 0.1
    done
    # Without credentials the registry must refuse: the case then proves the target authenticates.
    [ "$(http_code "$base/v2/")" = 401 ] || { echo "ci.sh: the registry does not ask for credentials" >&2; return 1; }
    auth=(-u "$reg_user:$reg_pass")
    for l in l1 l2 l3; do
        d=$(sha256sum < "$img/$l.obd" | cut -d' ' -f1)
        loc=$(curl -sf "${auth[@]}" -D - -o /dev/null -X POST "$base/v2/$repo/blobs/uploads/" | tr -d '\r' |
            sed -n 's/^[Ll]ocation: //p')
        [ -n "$loc" ] || return 1
        [[ "$loc" == /* ]] && loc=$base$loc
        [[ "$loc" == *\?* ]] && loc="$loc&digest=sha256:$d" || loc="$loc?digest=sha256:$d"
        curl -sf "${auth[@]}" -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
            --data-binary "@$img/$l.obd" "$loc" || return 1
        lowers="$lowers${lowers:+,}{\"digest\":\"sha256:$d\",\"size\":$(stat -c %s "$img/$l.obd")}"
    done
    [ "$(http_code "$base/v2/$repo/blobs/sha256:$d")" = 401 ] ||
        { echo "ci.sh: the registry serves blobs without credentials" >&2; return 1; }
    echo "{\"repoBlobUrl\":\"$base/v2/$repo/blobs\",\"lowers\":[$lowers]}" > "$reg_cfg"
    # The key names the repository (127.0.0.1:PORT/ci/image), one of the candidates the blob URL gives.
    echo "{\"auths\":{\"127.0.0.1:$rport/$repo\":{\"username\":\"$reg_user\",\"password\":\"$reg_pass\"}}}" > "$work/cred.json"
    echo "{\"credentialConfig\":{\"mode\":\"file\",\"path\":\"$work/cred.json\"},\"cacheConfig\":{\"cacheType\":\"file\",\"cacheDir\":\"$work/cache\",\"cacheSizeGB\":1},\"download\":{\"enable\":false}}" > "$obd_cfg"
}
if selected registry; then
    start_registry || { tail -5 "$work/registry.log" >&2; echo "ci.sh: docker-registry setup failed" >&2; exit 1; }
fi

# The hotplug case: the target gets a management socket and a state file of its own, and the
# guest's hooks (run.sh --on) add a second ext4 image (its /marker.txt tells it apart) as LUN
# $hp_lun, then force-remove it. `ctl lun add` prints the number it chose: anything else fails the
# hook, and the guest, finding no such disk, fails hotplug_add.
hp=$work/hotplug
hp_lun=1
if selected hotplug; then
    mkdir -p "$hp"
    bash "$here/make-test-image.sh" "$hp/lun1.img" 16M "hotplug LUN of ci.sh, $(date +%s.%N) $RANDOM" > /dev/null
    cat > "$hp/add.sh" <<EOF
set -euo pipefail
n=\$(timeout 30 '$bin' ctl --api '$hp/api.sock' lun add '$iqn' 'file:$hp/lun1.img')
echo "ctl lun add printed \$n at \$(date +%T.%N)"
[ "\$n" = $hp_lun ]
EOF
    cat > "$hp/remove.sh" <<EOF
set -euo pipefail
timeout 30 '$bin' ctl --api '$hp/api.sock' lun remove '$iqn' $hp_lun --force
echo "ctl lun remove $hp_lun --force done at \$(date +%T.%N)"
EOF
fi

# The multipath case: the target listens on a second portal ($mp_port2, portal group 2), which
# the guest reaches only through fault_proxy --tcp ($mp_pport); the guest's hooks (run.sh --on)
# cut that link (SIGUSR1: the proxy holds every connection silent, as a network outage would)
# and restore it (SIGUSR2: the held connections are reset, new ones pass).
mp=$work/multipath
mp_port2=$((port + 1)) mp_pport=$((port + 2))
start_mp_proxy() {
    "$fault_proxy" --tcp --listen "$addr:$mp_pport" --upstream "$addr:$mp_port2" >> "$mp/proxy.log" 2>&1 &
    mp_proxy_pid=$!
    local up_by=$((SECONDS + 20))
    until grep -q '^fault_proxy: tcp ' "$mp/proxy.log"; do
        kill -0 "$mp_proxy_pid" 2> /dev/null && [ "$SECONDS" -lt "$up_by" ] || return 1
        sleep 0.1
    done
    for sig in USR1 USR2; do
        cat > "$mp/$sig.sh" << EOF
set -euo pipefail
kill -$sig $mp_proxy_pid
echo "SIG$sig sent to fault_proxy at \$(date +%T.%N)"
EOF
    done
}
if selected multipath; then
    mkdir -p "$mp"
    : > "$mp/proxy.log"
    [ -x "$fault_proxy" ] || { echo "ci.sh: no fault_proxy at $fault_proxy" >&2; exit 1; }
    start_mp_proxy || { cat "$mp/proxy.log" >&2; echo "ci.sh: fault_proxy --tcp did not start" >&2; exit 1; }
fi

# The container case: a node's image service in the guest. Two images are built with our tools
# from trees holding a static busybox (the guest's own) and a shell script as the application
# (app: two layers, a base and the app on top; app2: one layer), pushed with `push` to an
# anonymous docker-registry where the guest reaches it (10.0.2.2), and the guest runs our target
# and `attach` (run.sh --container; guest-init.sh lists the steps). A third image, bulk (random
# files), is read through fault_proxy, which the guest tells to black the registry out, and
# through a second one 25 ms away per request, whose start a learning target records and, cold
# again, replays (the trace step).
ctr=$work/container
ctr_registry_pid="" ctr_proxy_pid="" ctr_slow_pid=""
# wait_http URL PID: true once URL answers 200; false if PID exits or 20 s pass first.
wait_http() {
    local up_by=$((SECONDS + 20))
    until [ "$(http_code "$1")" = 200 ]; do
        kill -0 "$2" 2> /dev/null && [ "$SECONDS" -lt "$up_by" ] || return 1
        sleep 0.1
    done
}
prepare_container() {
    local guest rport pport sport base_url push_args=() t
    guest=$(bash "$here/build-guest.sh" --quiet) || return 1
    mkdir -p "$ctr/base/bin" "$ctr/base/etc" "$ctr/base/tmp"
    cpio -i --quiet --to-stdout bin/busybox < "$guest/initramfs.cpio" > "$ctr/base/bin/busybox"
    chmod 755 "$ctr/base/bin/busybox"
    [ -s "$ctr/base/bin/busybox" ] || { echo "ci.sh: no busybox in the guest's initramfs" >&2; return 1; }
    for a in sh echo cat ls mkdir; do ln -s busybox "$ctr/base/bin/$a"; done
    echo "base layer of ci/app, $(date +%s.%N)" > "$ctr/base/etc/base-marker"
    for t in app app2; do
        cp -a "$ctr/base" "$ctr/$t"
        mkdir -p "$ctr/$t/app"
        printf '#!/bin/sh\necho "hello from ci/%s v1"\ncat /etc/base-marker\nls /app\n' "$t" > "$ctr/$t/app/run.sh"
        chmod 755 "$ctr/$t/app/run.sh"
    done
    cp -a "$ctr/base" "$ctr/bulk"
    mkdir -p "$ctr/bulk/data"
    for t in 1 2 3 4 5 6; do head -c 1M /dev/urandom > "$ctr/bulk/data/file$t"; done
    "$bin" build -z --size 64M "$ctr/bulk" "$ctr/bulk.obd" "$ctr/bulk.json" &&
        "$bin" build -z --size 64M "$ctr/base" "$ctr/base.obd" "$ctr/base.json" &&
        "$bin" build -z --base "$ctr/base.json" "$ctr/app" "$ctr/app.obd" "$ctr/app.json" &&
        "$bin" build -z --size 64M "$ctr/app2" "$ctr/app2.obd" "$ctr/app2.json" || return 1
    rport=$((20000 + RANDOM % 40000))
    [ "$rport" != "$port" ] || rport=$((rport + 1))
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s:%s\n' \
        "$ctr/registry" "$addr" "$rport" > "$ctr/registry.yml"
    docker-registry serve "$ctr/registry.yml" > "$ctr/registry.log" 2>&1 &
    ctr_registry_pid=$!
    base_url=http://$addr:$rport
    wait_http "$base_url/v2/" "$ctr_registry_pid" || return 1
    [ "$addr" = 127.0.0.1 ] || push_args=(--plain-http "$addr:$rport")
    "$bin" push "${push_args[@]}" "$ctr/app.json" "$addr:$rport/ci/app:v1" > "$ctr/push.log" 2>&1 &&
        "$bin" push "${push_args[@]}" "$ctr/app2.json" "$addr:$rport/ci/app2:v1" >> "$ctr/push.log" 2>&1 &&
        "$bin" push "${push_args[@]}" "$ctr/bulk.json" "$addr:$rport/ci/bulk:v1" >> "$ctr/push.log" 2>&1 ||
        { cat "$ctr/push.log" >&2; return 1; }
    pport=$((rport + 1))
    [ "$pport" != "$port" ] || pport=$((pport + 1))
    "$fault_proxy" --listen "$addr:$pport" --upstream "$addr:$rport" > "$ctr/proxy.log" 2>&1 &
    ctr_proxy_pid=$!
    wait_http "http://$addr:$pport/v2/" "$ctr_proxy_pid" || return 1
    # The trace step's distant registry: the same one, 25 ms away per request.
    sport=$((pport + 1))
    [ "$sport" != "$port" ] || sport=$((sport + 1))
    "$fault_proxy" --listen "$addr:$sport" --upstream "$addr:$rport" --latency-ms 25 > "$ctr/slow.log" 2>&1 &
    ctr_slow_pid=$!
    wait_http "http://$addr:$sport/v2/" "$ctr_slow_pid" || return 1
    cat > "$ctr/guest.env" <<EOF
REGISTRY=10.0.2.2:$rport
APP_REF=ci/app:v1
APP_FIRST_LINE='hello from ci/app v1'
APP_OUTPUT_MD5=$(printf 'hello from ci/app v1\n%s\nrun.sh\n' "$(cat "$ctr/base/etc/base-marker")" | md5sum | cut -d' ' -f1)
APP2_REF=ci/app2:v1
APP2_FIRST_LINE='hello from ci/app2 v1'
PROXY=10.0.2.2:$pport
SLOW=10.0.2.2:$sport
BULK_REF=ci/bulk:v1
BULK_MD5S=$(cd "$ctr/bulk" && md5sum data/* | md5sum | cut -d' ' -f1)
BLACKOUT_SECS=60
FAIL_SECS=10
EOF
}
# container_case: the guest runs the node case against the images of prepare_container.
container_case() {
    local rc=0 why="" t0 left
    selected container || return 0
    echo "== ci.sh: case container"
    t0=$(date +%s.%N)
    left=$((ci_deadline - SECONDS))
    [ "$left" -le 300 ] || left=300
    if [ "$left" -lt 30 ]; then
        why="not run: the ${budget}s budget is used up"
    elif ! prepare_container > "$work/container.log" 2>&1; then
        why="preparing the images and registry failed: $(tail -1 "$work/container.log")"
    else
        bash "$here/run.sh" --container "$ctr/guest.env" --bin "$bin" --mem 768 --timeout "$left" \
            --logs "$logs/container" "${net_args[@]}" > "$logs/container.out" 2>&1 || rc=$?
        grep -E '^(RESULT|  INFO (attach|wwid|rw wwid|blackout|fail|trace))|^run.sh' "$logs/container.out" || true
        grep -E 'blackout|refused' "$ctr/proxy.log" | tail -3 || true
        [ "$rc" = 0 ] ||
            why="$(grep -c '^RESULT .* FAIL' "$logs/container.out") checks failed: $(grep -m1 '^RESULT .* FAIL' "$logs/container.out" | cut -d' ' -f2-)"
    fi
    [ -z "$ctr_registry_pid" ] || { kill "$ctr_registry_pid" 2> /dev/null; wait "$ctr_registry_pid" 2> /dev/null || true; }
    [ -z "$ctr_proxy_pid" ] || { kill "$ctr_proxy_pid" 2> /dev/null; wait "$ctr_proxy_pid" 2> /dev/null || true; }
    [ -z "$ctr_slow_pid" ] || { kill "$ctr_slow_pid" 2> /dev/null; wait "$ctr_slow_pid" 2> /dev/null || true; }
    ctr_registry_pid="" ctr_proxy_pid="" ctr_slow_pid=""
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ -z "$why" ]; then
        results+=("CASE container PASS ${secs}s")
    else
        results+=("CASE container FAIL ${secs}s $why")
        failed=$((failed + 1))
    fi
    echo "${results[-1]}"
}

t_all=$(date +%s.%N)
ci_deadline=$((SECONDS + budget))

case_ ro pass --target "$iqn" --lun "file:$disk" -- --scsi-log
case_ rw pass --target "$iqn" --lun "file:$disk" -- --rw --raw-write --full-md5 --scsi-log
case_ digests pass --target "$iqn" --lun "file:$disk" -- --digests on --rw --raw-write --scsi-log
# The --digests knob: CRC32C chosen when the initiator offers both; when required, an initiator
# offering None only is refused (already at the discovery session's login).
case_ digests_preferred pass-crc32c --target "$iqn" --lun "file:$disk" --digests prefer-crc32c -- \
    --header-digest CRC32C,None --data-digest CRC32C,None
case_ digests_required_refused discovery-fail --target "$iqn" --lun "file:$disk" --digests require-crc32c --
case_ chap_one_way pass --config "$chap_conf" -- "${chap[@]}"
case_ chap_mutual pass --config "$chap_conf" -- "${chap[@]}" "${mutual[@]}" --rw --scsi-log
case_ chap_wrong_secret login-fail --config "$chap_conf" -- --chap-user vm-guest --chap-secret wrong-secret-99
case_ chap_missing login-fail --config "$chap_conf" --
# run.sh takes the last --image: the exported raw file stands for the image the target serves.
case_ image pass --target "$iqn" --lun "image:$img/c3.json" -- --image "$img/final.raw" --scsi-log
case_ registry pass-cached --target "$iqn" --lun "image:$reg_cfg" --overlaybd-config "$obd_cfg" -- \
    --image "$img/final.raw" --scsi-log
case_ restart pass --target "$iqn" --lun "file:$disk" -- --restart-read --on-read "bash $work/restart.sh" --scsi-log
case_ hotplug pass --target "$iqn" --lun "file:$disk" --api "$hp/api.sock" --state "$hp/state.json" -- \
    --hotplug "$hp/lun1.img" --hotplug-lun "$hp_lun" --on hotplug-add "bash $hp/add.sh" \
    --on hotplug-remove "bash $hp/remove.sh" --scsi-log
case_ multipath pass --portal "$addr:$mp_port2" --target "$iqn" --lun "file:$disk" -- \
    --multipath "$addr:$mp_pport" --on mp-cut "bash $mp/USR1.sh" --on mp-restore "bash $mp/USR2.sh" --scsi-log
if [ -n "$mp_proxy_pid" ]; then
    stop_mp_proxy
    cp "$mp/proxy.log" "$logs/multipath.proxy.log"
    grep -E 'cut|restored|ended' "$logs/multipath.proxy.log" | sed 's/^/  /' || true
fi
container_case

echo "== ci.sh: summary (logs in $logs)"
printf '%s\n' "${results[@]}"
echo "network $net, guest iscsi_tcp reads in ${net_args[-1]}"
echo "total $(awk -v a="$t_all" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s, ${#results[@]} cases, $failed failed"
[ "$failed" = 0 ]
