#!/usr/bin/env bash
# Runs the MotionGear demo end to end on the embedded default: builds a small
# bootable Linux disk, captures it onto a simulated appliance, seals it,
# ingests it into a local volume and boots that volume under QEMU (TCG, no
# network). Installs what it needs first. Extra arguments go to `mgear demo`.
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh demo
cargo build --release --workspace --bins
exec target/release/mgear demo "$@"
