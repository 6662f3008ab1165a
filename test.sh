#!/usr/bin/env bash
# Runs the whole MotionGear test suite: formatting, lints, unit tests and the
# end-to-end scenarios (which drive the real binaries, QEMU and NBD peers, and
# the cloud lab: Ceph + Cinder + Nova on this machine, scripts/cloud-lab.sh).
# Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh test

# The cloud lab takes minutes to come up (longer the first time: its packages).
# It starts here, in the background, so it comes up while cargo builds; the
# tests wait for it only right before `cargo test`. A lab that already runs
# (a developer's own, `scripts/cloud-lab.sh start`) is used and left running;
# one started here is stopped on every exit path.
LAB_DIR=${MGEAR_CLOUD_LAB_DIR:-/var/tmp/mgear-cloud-lab}
LAB_LOG=$(mktemp -t mgear-cloud-lab-start.XXXXXX)
LAB_PID=""
LAB_OURS=0
stop_lab() {
    local rc=$?
    if [[ -n "$LAB_PID" ]] && kill -0 "$LAB_PID" 2>/dev/null; then
        # Still starting: end the start script (a running apt-get finishes on its own),
        # then stop whatever daemons it spawned.
        kill "$LAB_PID" 2>/dev/null || true
        wait "$LAB_PID" 2>/dev/null || true
    fi
    if [[ "$LAB_OURS" == 1 ]]; then
        echo "==> stopping the cloud lab"
        scripts/cloud-lab.sh stop || true
    fi
    rm -f "$LAB_LOG"
    exit "$rc"
}
trap stop_lab EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ $(id -u) -ne 0 ]]; then
    echo "the cloud lab (scripts/cloud-lab.sh) needs root: run ./test.sh as root" >&2
    exit 1
fi
if scripts/cloud-lab.sh status >/dev/null 2>&1; then
    echo "==> cloud lab: already running in $LAB_DIR, using it (left running)"
else
    echo "==> starting the cloud lab in the background (log: $LAB_LOG)"
    LAB_OURS=1
    # The lab's own waits each have a deadline; this caps the whole start (packages included).
    timeout --kill-after=10 2400 scripts/cloud-lab.sh start >"$LAB_LOG" 2>&1 &
    LAB_PID=$!
fi
LAB_T0=$(date +%s)

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

if [[ -n "$LAB_PID" ]]; then
    echo "==> waiting for the cloud lab"
    WAIT_T0=$(date +%s)
    lab_rc=0
    wait "$LAB_PID" || lab_rc=$?
    LAB_PID=""
    if [[ "$lab_rc" != 0 ]]; then
        echo "the cloud lab did not start (exit $lab_rc; 124 = over 40 min); its output:" >&2
        cat "$LAB_LOG" >&2
        exit 1
    fi
    echo "==> cloud lab up $(($(date +%s) - LAB_T0)) s after its start;" \
        "the tests waited $(($(date +%s) - WAIT_T0)) s for it"
fi
# CEPH_CONF, OS_*, MGEAR_CLOUD_LAB...: the cloud_lab scenarios run when MGEAR_CLOUD_LAB is set.
eval "$(scripts/cloud-lab.sh env)"

echo "==> cargo test"
cargo test --workspace "$@"
