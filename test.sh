#!/usr/bin/env bash
# Runs the whole MotionGear test suite: formatting, lints, unit tests and the
# end-to-end scenarios (which drive the real binaries, QEMU, NBD peers,
# libvirt and the cloud lab). Installs what it needs first.
#
# The slow set-up that does not need the CPU (Debian packages, the Debian
# fixture of the driver-adaptation test, which is built once per machine) runs
# in the background while cargo lints and builds; the tests wait for it.
# Arguments are passed to `cargo test` (e.g. `./test.sh --no-fail-fast` or
# `./test.sh -p mgear-tests --test e2e -- cli_e2e::`).
set -euo pipefail
cd "$(dirname "$0")"

logs=target/test-logs
mkdir -p "$logs"
started=$SECONDS
step() { echo "==> [$((SECONDS - started)) s] $*"; }

if ! command -v cargo >/dev/null; then
    echo "MotionGear is built with Rust (cargo 1.80 or newer), which is not installed." >&2
    echo "    install it with rustup (https://rustup.rs) or: sudo apt-get install cargo" >&2
    exit 1
fi

# Background set-up: packages first (apt holds one lock), then what needs them.
step "set-up in the background (log: $logs/setup.log): Debian packages, test fixture"
(
    set -e
    scripts/deps.sh test
    scripts/debian-fixture.sh
) >"$logs/setup.log" 2>&1 &
setup_pid=$!

wait_setup() {
    step "waiting for the background set-up"
    if ! wait "$setup_pid"; then
        echo "the background set-up failed; its log ($logs/setup.log) ends with:" >&2
        tail -n 30 "$logs/setup.log" >&2
        exit 1
    fi
}

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "firmware core builds without std"
firmware/check-no-std.sh
step "cargo build (the end-to-end tests drive the built binaries)"
cargo build --workspace --bins --tests
wait_setup
step "starting libvirtd (no systemd here; the libvirt tests need it)"
scripts/libvirtd.sh
step "cargo test"
cargo test --workspace "$@"
step "done"
