#!/usr/bin/env bash
# Makes a small ext4 image holding a few files (text, random bytes, a subdirectory) for the VM
# checks, without root (mkfs.ext4 -d). Every call makes different random content and a new UUID.
# Usage: make-test-image.sh PATH SIZE [MARKER]   (SIZE as truncate takes it, e.g. 32M)
#   MARKER   also writes /marker.txt with this text, so that a guest seeing two such disks (the
#            hotplug case) can tell which one it mounted
set -euo pipefail
[ $# = 2 ] || [ $# = 3 ] || { echo "usage: make-test-image.sh PATH SIZE [MARKER]" >&2; exit 2; }
tree=$(mktemp -d "${TMPDIR:-/tmp}/vmi-tree.XXXXXX")
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/sub"
echo "hello from the host" > "$tree/hello.txt"
head -c 300000 /dev/urandom > "$tree/sub/random.bin"
seq 1 20000 > "$tree/sub/seq.txt"
[ $# = 2 ] || echo "$3" > "$tree/marker.txt"
rm -f "$1"
truncate -s "$2" "$1"
mkfs.ext4 -q -F -d "$tree" -L vmtest "$1"
