#!/usr/bin/env bash
# Prints cargo's target directory for this repository as an absolute path: CARGO_TARGET_DIR,
# a `build.target-dir` in a cargo config, or `target/`. Scripts use it instead of assuming
# `target/release`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
