#!/usr/bin/env bash
# Installs the Debian packages the tests use, when they are missing.
set -euo pipefail
# prometheus: its promtool checks the /metrics text (tests/metrics.rs). nginx: a caching mirror
# in front of docker-registry (tests/registry_docker.rs).
pkgs=(libiscsi-bin tgt qemu-utils qemu-block-extra e2fsprogs docker-registry curl apache2-utils prometheus nginx)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian's qemu-block-extra (qemu-img's iSCSI driver) requires qemu-utils of its own version: on
# a machine with a newer qemu-utils from backports, installing it makes apt remove qemu-img.
# Installing qemu-utils again then brings the matching version.
if ! command -v qemu-img >/dev/null; then
    echo "install-deps: qemu-img went missing (qemu-utils removed for qemu-block-extra's version); installing it again"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-utils >/dev/null
fi
