#!/usr/bin/env bash
# Runs the whole MotionGear test suite: formatting, lints, unit tests and the
# end-to-end scenarios (which drive the real binaries, QEMU and NBD peers).
# Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh test
echo "==> starting libvirtd (no systemd here; the libvirt tests need it)"
scripts/libvirtd.sh
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> firmware core builds without std"
firmware/check-no-std.sh
echo "==> cargo build (the end-to-end tests drive the built binaries)"
cargo build --workspace --bins
echo "==> cargo test"
cargo test --workspace "$@"
