#!/usr/bin/env bash
# CI check: the appliance API crate and the firmware core build without
# std, and no dependency they link (normal edges) has its `std` feature
# switched on. Build scripts and proc-macros run on the host and may use
# std, so build edges are ignored. Also the appliance side's layering
# (firmware/README.md): no appliance crate links a host-tool crate, and the
# host tools link the appliance API, not the firmware's state machine.
set -euo pipefail
cd "$(dirname "$0")/.."

for crate in mgear-appliance-api mgear-firmware; do
    echo "== cargo check -p $crate --no-default-features"
    cargo check -q -p "$crate" --no-default-features

    echo "== $crate: dependency features (normal edges) must not include std"
    tree=$(cargo tree -p "$crate" --no-default-features -e normal,features --prefix none)
    if grep -E 'feature "(std|use-std)"' <<<"$tree"; then
        echo "FAIL: a dependency of $crate enables std in the no_std build (above)" >&2
        exit 1
    fi
done

echo "== cargo check -p mgear-firmware --no-default-features --features defmt"
cargo check -q -p mgear-firmware --no-default-features --features defmt

echo "== both logging backends at once must be refused"
if cargo check -q -p mgear-firmware --no-default-features --features defmt,log 2>/dev/null; then
    echo "FAIL: features defmt and log together compiled; fmt.rs must refuse them" >&2
    exit 1
fi

echo "== layering: appliance crates never link host-tools crates"
for crate in mgear-appliance-api mgear-firmware mgear-hardware mgear-appliance-sim mgear-nbd-proto; do
    # Path dependencies print their directory: a host-tools one is a reach up.
    if cargo tree -p "$crate" -e normal --prefix none | grep -F '/host-tools/'; then
        echo "FAIL: $crate depends on a host-tools crate (above)" >&2
        exit 1
    fi
done
if cargo tree -p mgear -e normal --prefix none | grep -E '^mgear-firmware '; then
    echo "FAIL: mgear links the firmware core; use mgear-appliance-api" >&2
    exit 1
fi

echo "no_std check: OK"
