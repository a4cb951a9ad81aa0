#!/bin/sh
# Builds assets/demo.obd, the image served when overlaybd-target runs without --lun/--config:
# a small ext4 filesystem holding README, made with mkfs.ext4 -d and turned into a single
# ZFile-compressed (zstd) sealed layer by our own `import` tool. Run from the repository root;
# needs e2fsprogs. The result is committed (include_bytes! in src/config/demo.rs).
set -eu
cd "$(dirname "$0")/.."
bin=${BIN:-}
if [ -z "$bin" ]; then cargo build --release --quiet; bin=$(bash scripts/target-dir.sh)/release/overlaybd-target; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree"
cat > "$work/tree/README" <<'TEXT'
Welcome to overlaybd-target.

This disk is the demo image embedded in the overlaybd-target binary: an ext4 filesystem
stored as one ZFile-compressed overlaybd (LSMT) layer, served read-only as LUN 0 of
iqn.2026-11.io.overlaybd:demo. Serve your own images with --lun image:CONFIG.json.
TEXT
truncate -s 8M "$work/demo.raw"
# Fixed UUID, hash seed and time keep the filesystem's bytes reproducible.
E2FSPROGS_FAKE_TIME=1795000000 mkfs.ext4 -q -F -b 1024 -N 64 -L demo \
    -U 6f766572-6c61-7962-6400-64656d6f0001 -E hash_seed=6f766572-6c61-7962-6400-64656d6f0000 \
    -O ^has_journal,^resize_inode -d "$work/tree" "$work/demo.raw"
rm -f assets/demo.obd
"$bin" import -z --algorithm zstd -m "overlaybd-target demo" \
    "$work/demo.raw" assets/demo.obd "$work/config.v1.json"
ls -l assets/demo.obd
