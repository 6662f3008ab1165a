#!/usr/bin/env bash
# Runs the whole MotionGear test suite: formatting, lints, unit tests and the
# end-to-end scenarios (which drive the real binaries, QEMU, NBD peers,
# libvirt and the cloud lab). Installs what it needs first.
#
# The slow set-up that does not need the CPU (Debian packages, the Debian
# fixture of the driver-adaptation test, which is built once per machine, and
# the cloud lab: Ceph + Cinder + Nova, scripts/cloud-lab.sh) runs in the
# background while cargo lints and builds; the tests wait for the fixture, and
# those that need the lab for the lab (the others run meanwhile).
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
if [[ $(id -u) -ne 0 ]]; then
    echo "./test.sh runs as root: the cloud lab (Ceph, Cinder, Nova) and libvirt's system daemon need it" >&2
    exit 1
fi

# Background set-up: packages first (apt holds one lock), then what needs them.
step "set-up in the background (log: $logs/setup.log): Debian packages, test fixture"
rm -f "$logs/deps.done"
(
    set -e
    scripts/deps.sh test
    touch "$logs/deps.done"
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

# The cloud lab: its packages (apt, so after deps.sh) and its start take minutes; they run
# meanwhile. A lab that already runs (a developer's `scripts/cloud-lab.sh start`) is used and
# left running; one started here is stopped on every exit path.
lab_pid=""
lab_ours=0
stop_lab() {
    local rc=$?
    if [[ -n "$lab_pid" ]] && kill -0 "$lab_pid" 2>/dev/null; then
        # Still starting: end it (a running apt-get finishes on its own), then stop what it spawned.
        kill "$lab_pid" 2>/dev/null || true
        wait "$lab_pid" 2>/dev/null || true
    fi
    if [[ "$lab_ours" == 1 ]]; then
        step "stopping the cloud lab"
        scripts/cloud-lab.sh stop >>"$logs/cloud-lab.log" 2>&1 || true
    fi
    exit "$rc"
}
trap stop_lab EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if scripts/cloud-lab.sh status >/dev/null 2>&1; then
    step "cloud lab: already running, using it (left running)"
else
    step "cloud lab in the background (log: $logs/cloud-lab.log)"
    lab_ours=1
    (
        # apt holds one lock: the lab's packages go in after deps.sh's.
        until [[ -e "$logs/deps.done" ]]; do
            kill -0 "$setup_pid" 2>/dev/null || {
                echo "the package set-up failed before the cloud lab could install (see $logs/setup.log)"
                exit 1
            }
            sleep 1
        done
        # libvirtd first, from here only: two concurrent starts of it could race.
        scripts/libvirtd.sh
        # The lab's own waits each have a deadline; this caps the whole start, packages included.
        exec timeout --kill-after=10 2400 scripts/cloud-lab.sh start
    ) >"$logs/cloud-lab.log" 2>&1 &
    lab_pid=$!
fi

wait_lab() {
    [[ -n "$lab_pid" ]] || return 0
    step "waiting for the cloud lab"
    local rc=0
    wait "$lab_pid" || rc=$?
    lab_pid=""
    if [[ "$rc" != 0 ]]; then
        echo "the cloud lab did not start (exit $rc; 124: not within 40 min); its log ($logs/cloud-lab.log) ends with:" >&2
        tail -n 30 "$logs/cloud-lab.log" >&2
        exit 1
    fi
    grep -h '^cloud-lab: up in' "$logs/cloud-lab.log" || true
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
# CEPH_CONF, OS_*, MGEAR_CLOUD_LAB...: the cloud_lab scenarios run when MGEAR_CLOUD_LAB is set.
if [[ $# -eq 0 && -n "$lab_pid" ]] && kill -0 "$lab_pid" 2>/dev/null; then
    # On a fresh machine the lab's packages alone take about 11 minutes, longer than the
    # build: the tests that do not need it run meanwhile, then its own scenarios. (A lab
    # that is up by now runs its scenarios alongside the others, below: they mostly wait
    # on Nova and Cinder, and leave the cores to the rest.)
    step "cargo test, all but the cloud lab's scenarios (the lab is still starting)"
    cargo test --workspace -- --skip cloud_lab::
    wait_lab
    eval "$(scripts/cloud-lab.sh env)"
    step "cargo test: the cloud lab's scenarios"
    # --workspace: the features of the build above (`-p` alone would rebuild with others).
    cargo test --workspace --test e2e -- cloud_lab::
else
    wait_lab
    eval "$(scripts/cloud-lab.sh env)"
    step "cargo test"
    cargo test --workspace "$@"
fi
step "done"
