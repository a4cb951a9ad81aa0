#!/usr/bin/env bash
# Installs the Debian packages the tests use, when they are missing.
set -euo pipefail
pkgs=(libiscsi-bin tgt qemu-utils qemu-block-extra e2fsprogs docker-registry curl apache2-utils)
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
