#!/usr/bin/env bash
# Runs the cargo-fuzz targets (libFuzzer) one after the other, each for a
# fixed time, on the stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the
# sanitizer flags cargo-fuzz needs). Before fuzzing, each fuzz crate's
# `examples/seeds.rs` writes a seed corpus from real data (a real capture,
# a real appliance session, real NBD peers) into its `corpus/<target>/`.
# Prints one line per target; exits 1 if any target crashed, naming the
# reproducer and the command that replays it. Not part of ./test.sh: it
# takes minutes per target.
#
# Usage: scripts/fuzz.sh [--time SECS] [--sanitizer address|none] [TARGET...]
#   default: 60 s per target, AddressSanitizer, every target.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

time_per=60
sanitizer=address
targets=()
while (($#)); do
    case "$1" in
    --time)
        time_per="${2:?--time needs seconds}"
        shift 2
        ;;
    --sanitizer)
        sanitizer="${2:?--sanitizer needs address or none}"
        shift 2
        ;;
    -h | --help)
        sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *)
        targets+=("$1")
        shift
        ;;
    esac
done
if ! [[ "$time_per" =~ ^[0-9]+$ ]] || ((time_per < 1)); then
    echo "--time wants a whole number of seconds, got '$time_per'" >&2
    exit 2
fi

# Target -> fuzz crate directory.
declare -A dir_of=(
    [decode_structures]=image-format/fuzz
    [verify_medium]=image-format/fuzz
    [read_capture]=image-format/fuzz
    [client]=host-tools/nbd/fuzz
    [server]=host-tools/nbd/fuzz
    [url]=host-tools/nbd/fuzz
    [frame_decoder]=firmware/fuzz
    [console]=firmware/fuzz
    [custody_log]=firmware/fuzz
    [attestation]=firmware/fuzz
    [sync_wire]=host-tools/mgear/fuzz
)
all=(decode_structures verify_medium read_capture client server url
    frame_decoder console custody_log attestation sync_wire)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
    if [[ -z "${dir_of[$t]:-}" ]]; then
        echo "unknown target '$t'; targets: ${all[*]}" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

# cargo fuzz builds in each fuzz crate's own (gitignored) target directory.
unset CARGO_TARGET_DIR

declare -A seeded=()
failed=0
summary=()
for t in "${targets[@]}"; do
    d="${dir_of[$t]}"
    cd "$root/$d"
    if [[ -z "${seeded[$d]:-}" ]]; then
        echo "==> $d: seed corpus"
        nice -n 15 cargo run --quiet --example seeds -- corpus
        seeded[$d]=1
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "==> $d: fuzzing $t for ${time_per}s (log: $d/$log)"
    # --debug-assertions: integer overflow panics, as in debug builds.
    # One libFuzzer process at a time (no -jobs/-fork), low priority.
    set +e
    RUSTC_BOOTSTRAP=1 nice -n 15 cargo fuzz run --fuzz-dir . --sanitizer "$sanitizer" --debug-assertions \
        "$t" "corpus/$t" -- \
        -max_total_time="$time_per" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    files=$(find "corpus/$t" -type f | wc -l)
    bytes=$(du -sk --apparent-size "corpus/$t" | cut -f1)
    if ((rc == 0)); then
        line="ok    $t: ${execs:-?} execs in ${secs:-?}s, corpus $files files (${bytes} KiB)"
    else
        failed=1
        repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        if [[ -n "$repro" ]]; then
            line="CRASH $t: reproducer $d/$repro; replay: (cd $d && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir . --debug-assertions $t $repro); log $d/$log"
        else
            line="FAIL  $t: cargo fuzz exited with $rc (build error?); log $d/$log"
        fi
    fi
    echo "$line"
    summary+=("$line")
done

echo "==> summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
