#!/usr/bin/env bash
# CI check: the firmware core builds without std, and no dependency it
# links (normal edges) has its `std` feature switched on. Build scripts and
# proc-macros run on the host and may use std, so build edges are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo check -p mgear-firmware --no-default-features"
cargo check -q -p mgear-firmware --no-default-features

echo "== cargo check -p mgear-firmware --no-default-features --features defmt"
cargo check -q -p mgear-firmware --no-default-features --features defmt

echo "== dependency features (normal edges) must not include std"
tree=$(cargo tree -p mgear-firmware --no-default-features -e normal,features --prefix none)
if grep -E 'feature "(std|use-std)"' <<<"$tree"; then
    echo "FAIL: a dependency of mgear-firmware enables std in the no_std build (above)" >&2
    exit 1
fi

echo "== both logging backends at once must be refused"
if cargo check -q -p mgear-firmware --no-default-features --features defmt,log 2>/dev/null; then
    echo "FAIL: features defmt and log together compiled; fmt.rs must refuse them" >&2
    exit 1
fi

echo "no_std check: OK"
