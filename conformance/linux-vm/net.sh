# shellcheck shell=bash disable=SC2034  # (vmi_* are read by the scripts that source this)
# The guest's network, shared by ci.sh, check-target.sh and selftest-tgt.sh (sourced, not run).
#
# tap:  the calling script runs again inside a new network namespace of its own (unshare --net;
#       it disappears with its last process), with a tap device vmi0 whose host side is
#       10.0.2.2/24. Targets listen on 10.0.2.2 and the guest talks to this namespace's TCP stack
#       directly. Needs root, /dev/net/tun, unshare and ip.
# user: QEMU's user-mode network (slirp); targets listen on 127.0.0.1, which the guest reaches as
#       10.0.2.2 through slirp's own TCP/IP stack.
# Why tap is preferred: under slirp, the guest's default (softirq) iscsi_tcp reads stall for ~5 s
# now and then, with any target; so user mode reads in iscsi_tcp's workqueue instead (README.md,
# "Slow reads").

# vmi_tap_usable: whether a tap device can be made in a new network namespace.
vmi_tap_usable() {
    [ "$(id -u)" = 0 ] && [ -c /dev/net/tun ] && command -v unshare > /dev/null &&
        command -v ip > /dev/null && unshare --net ip tuntap add dev vmiprobe mode tap > /dev/null 2>&1
}

# vmi_net MODE RECV SCRIPT ARGS...: settles the network for MODE (auto, tap or user; auto is tap
# when vmi_tap_usable, else user). For tap, outside the namespace this re-executes
# `bash SCRIPT ARGS...` inside a new one and never returns; inside, it sets the tap device up.
# RECV is run.sh's --iscsi-recv, empty for the mode's default (softirq with tap, workqueue with
# user). Sets vmi_net (tap or user), vmi_addr (where targets must listen) and vmi_run_args (the
# run.sh options). Returns non-zero with a message when the mode cannot be had.
vmi_net() {
    local mode=$1 recv=$2
    shift 2
    [ -z "${VMI_NETNS:-}" ] || mode=tap
    case "$mode" in
        auto) if vmi_tap_usable; then mode=tap; else mode=user; fi ;;
        tap) [ -n "${VMI_NETNS:-}" ] || vmi_tap_usable ||
            { echo "tap networking needs root, /dev/net/tun, unshare and ip" >&2; return 2; } ;;
        user) ;;
        *) echo "the network mode is auto, tap or user, not '$mode'" >&2; return 2 ;;
    esac
    vmi_net=$mode
    if [ "$mode" = user ]; then
        vmi_addr=127.0.0.1
        vmi_run_args=(--iscsi-recv "${recv:-workqueue}")
        return 0
    fi
    [ -n "${VMI_NETNS:-}" ] || exec unshare --net env VMI_NETNS=1 bash "$@"
    if ! { ip link set lo up && ip tuntap add dev vmi0 mode tap && ip addr add 10.0.2.2/24 dev vmi0 &&
        ip link set vmi0 up; }; then
        echo "setting up the tap device failed" >&2
        return 1
    fi
    vmi_addr=10.0.2.2
    vmi_run_args=(--tap vmi0 --iscsi-recv "${recv:-softirq}")
}
