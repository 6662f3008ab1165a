#!/usr/bin/env bash
# Runs the MotionGear demo end to end on the embedded default: builds a small
# bootable Linux disk, captures it onto a simulated appliance, seals it,
# ingests it into a local volume and boots that volume under QEMU (TCG, no
# network). Installs what it needs first. Extra arguments go to `mgear demo`;
# with --cloud it ingests into the cloud lab's Cinder and boots through Nova
# (scripts/cloud-lab.sh, started here if no OS_* cloud is configured).
set -euo pipefail
cd "$(dirname "$0")"
scripts/deps.sh demo
if [[ " $* " == *" --cloud "* ]]; then
    # The journey into OpenStack: the local cloud lab (as root), unless a cloud is configured.
    if [[ -z "${OS_AUTH_TYPE:-}${OS_AUTH_URL:-}${OS_CLOUD:-}" ]]; then
        echo "demo --cloud: the cloud lab (Ceph, Cinder, Nova) is started if it is not running;" \
            "it stays running: scripts/cloud-lab.sh stop" >&2
        eval "$(scripts/cloud-lab.sh start)"
    fi
fi
cargo build --release --workspace --bins
exec target/release/mgear demo "$@"
