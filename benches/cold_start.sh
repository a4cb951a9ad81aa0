#!/bin/sh
# Cold start: time to read a start-up working set from a registry behind a slow link, on demand
# through the overlaybd-target cache vs downloading and decompressing the whole layer first.
# Needs mkfs.ext4 (e2fsprogs) and docker-registry (Debian package docker-registry).
# Options are passed on, e.g.: benches/cold_start.sh --runs 5 --latency-ms 20 --mbps 50
set -eu
cd "$(dirname "$0")/.."
for tool in mkfs.ext4 docker-registry; do
    command -v "$tool" >/dev/null || { echo "cold_start: $tool is missing" >&2; exit 1; }
done
exec cargo bench --bench cold_start -- "$@"
