#!/usr/bin/env bash
# flash.sh: build the MotionGear firmware for the reference board and flash it
# with probe-rs, or start the appliance simulator (--sim). `./flash.sh --help`
# says everything; the text is in usage() below.
set -euo pipefail

TARGET=thumbv8m.main-none-eabihf
BIN=mgear-board
PACKAGE=mgear-hardware
SIM_PACKAGE=mgear-appliance-sim

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
Usage: flash.sh [OPTIONS]
       flash.sh --sim [--sim-dir DIR] [--dry-run] [-- SIMULATOR-ARGS...]

Build the appliance firmware for the reference board (mg-ref-u5, STM32U5A5,
see hardware/BOARD.md) and flash it through an SWD probe with probe-rs.

Board options:
  --board FEATURE   board feature of $PACKAGE to build (default: board-u5a5)
  --chip NAME       probe-rs chip name (default: STM32U5A5ZJTx, env MGEAR_CHIP)
  --probe SELECTOR  which probe to use when several are attached
                    (probe-rs VID:PID[:SERIAL] syntax)
  --image PATH      flash this ELF instead of building one
                    (env MGEAR_FIRMWARE_IMAGE)
  --dfu             flash over USB with the STM32 system bootloader (hold
                    BOOT0 while plugging in) using dfu-util, instead of an
                    SWD probe; the ELF is converted to a raw image first
  --force           flash even if the image is identical to the last one
                    flashed to this chip/probe
  --dry-run         print the plan (build, image, flash and stamp commands,
                    whether the image would be skipped as identical, what is
                    missing) and change nothing

Simulator:
  --sim             instead of flashing, run the firmware core on this host:
                      cargo run -p $SIM_PACKAGE -- \\
                        --medium DIR/medium.img --state DIR/state \\
                        --console-link DIR/appliance.tty --nbd DIR/appliance.sock
                    Talk to it with: mgear appliance --port DIR/appliance.tty info
  --sim-dir DIR     directory for the simulator's files
                    (default: ./appliance-sim, env MGEAR_SIM_DIR)
  --medium-mib N    size of the FAT32 medium image created when
                    DIR/medium.img does not exist yet (default: 1024;
                    made with mkfs.fat from dosfstools)
  -- ARGS           extra arguments passed to the simulator unchanged

  -h, --help        this text

Re-flashing: after a successful flash the SHA-256 of the image is kept in a
stamp file (one per chip and probe) under \$MGEAR_STAMP_DIR (default:
target/flash-stamps). An image identical to the stamped one is not flashed
again unless --force is given. The stamp only knows what this script flashed:
use --force after flashing the board by other means.

Prerequisites (checked before anything runs; the message says what to install):
  - the Rust target:  rustup target add $TARGET
  - probe-rs:         cargo install probe-rs-tools --locked
                      (and the probe-rs udev rules for non-root access)
  - with --dfu:       apt-get install dfu-util, and an objcopy: rust-objcopy
                      (rustup component add llvm-tools; cargo install
                      cargo-binutils) or apt-get install binutils-arm-none-eabi

Environment (mainly for tests and unusual setups):
  MGEAR_PROBE_RS          probe-rs command (default: probe-rs)
  MGEAR_DFU_UTIL          dfu-util command (default: dfu-util)
  MGEAR_OBJCOPY           objcopy for --dfu (default: the first of rust-objcopy,
                          llvm-objcopy, arm-none-eabi-objcopy found)
  MGEAR_CARGO             cargo command (default: cargo)
  MGEAR_RUSTC             rustc used to find the installed targets (default: rustc)
  MGEAR_FIRMWARE_IMAGE    same as --image
  MGEAR_CHIP              same as --chip
  MGEAR_STAMP_DIR         where flash stamps are kept
  MGEAR_SIM_DIR           same as --sim-dir
  MGEAR_MKFS_FAT          mkfs.fat command (default: mkfs.fat)
  CARGO_TARGET_DIR        honoured when locating the built image

Exit status:
  0  flashed; simulator ended normally; dry run printed a plan that can run
  1  usage error or a failed step (build, flash)
  2  a prerequisite is missing (the message says what to install)
  3  the image is identical to the last one flashed; nothing done (use --force)
EOF
}

die() {
    echo "flash.sh: $*" >&2
    exit 1
}

# Print a command the way a user could paste it.
show() {
    local out="" arg
    for arg in "$@"; do
        out+="$(printf '%q' "$arg") "
    done
    printf '%s\n' "${out% }"
}

PROBE_RS=${MGEAR_PROBE_RS:-probe-rs}
DFU_UTIL=${MGEAR_DFU_UTIL:-dfu-util}
OBJCOPY=${MGEAR_OBJCOPY:-}
CARGO=${MGEAR_CARGO:-cargo}
RUSTC=${MGEAR_RUSTC:-rustc}
CHIP=${MGEAR_CHIP:-STM32U5A5ZJTx}
IMAGE=${MGEAR_FIRMWARE_IMAGE:-}
STAMP_DIR=${MGEAR_STAMP_DIR:-$REPO/target/flash-stamps}
SIM_DIR=${MGEAR_SIM_DIR:-./appliance-sim}
MKFS_FAT=${MGEAR_MKFS_FAT:-mkfs.fat}
MEDIUM_MIB=1024
BOARD=board-u5a5
PROBE=""
FORCE=0
DFU=0
DRY_RUN=0
SIM=0
SIM_ARGS=()

while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --board | --chip | --probe | --image | --sim-dir | --medium-mib)
            [ $# -ge 2 ] || die "$1 needs a value (see --help)"
            case "$1" in
                --board) BOARD=$2 ;;
                --chip) CHIP=$2 ;;
                --probe) PROBE=$2 ;;
                --image) IMAGE=$2 ;;
                --sim-dir) SIM_DIR=$2 ;;
                --medium-mib) MEDIUM_MIB=$2 ;;
            esac
            shift 2
            ;;
        --force)
            FORCE=1
            shift
            ;;
        --dfu)
            DFU=1
            shift
            ;;
        --dry-run)
            DRY_RUN=1
            shift
            ;;
        --sim)
            SIM=1
            shift
            ;;
        --)
            shift
            SIM_ARGS=("$@")
            break
            ;;
        *)
            die "unknown argument '$1' (see --help)"
            ;;
    esac
done

if [ "${#SIM_ARGS[@]}" -gt 0 ] && [ "$SIM" -eq 0 ]; then
    die "arguments after -- are for the simulator; add --sim"
fi

# --- simulator --------------------------------------------------------------

if [ "$SIM" -eq 1 ]; then
    case "$MEDIUM_MIB" in
        '' | *[!0-9]*) die "--medium-mib needs a whole number of MiB, not '$MEDIUM_MIB'" ;;
    esac
    medium="$SIM_DIR/medium.img"
    # mkfs.fat -C takes the size in KiB; FAT32 needs at least ~33 MiB.
    mkfs_cmd=("$MKFS_FAT" -F 32 -n MGEAR -C "$medium" "$((MEDIUM_MIB * 1024))")
    # --manifest-path instead of cd: relative paths stay relative to where
    # flash.sh was started.
    sim_cmd=("$CARGO" run --manifest-path "$REPO/Cargo.toml" -p "$SIM_PACKAGE" --
        --medium "$medium"
        --state "$SIM_DIR/state"
        --console-link "$SIM_DIR/appliance.tty"
        --nbd "$SIM_DIR/appliance.sock")
    if [ "${#SIM_ARGS[@]}" -gt 0 ]; then
        sim_cmd+=("${SIM_ARGS[@]}")
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        echo "plan (simulator):"
        echo "  mkdir: $SIM_DIR"
        if [ -e "$medium" ]; then
            echo "  medium: $medium (exists, kept)"
        else
            echo "  medium: $(show "${mkfs_cmd[@]}")"
        fi
        echo "  run:   $(show "${sim_cmd[@]}")"
        echo "  console: $SIM_DIR/appliance.tty   medium (NBD): $SIM_DIR/appliance.sock"
        exit 0
    fi
    command -v "$CARGO" >/dev/null 2>&1 ||
        { echo "flash.sh: missing: cargo ($CARGO): install Rust with rustup" >&2; exit 2; }
    mkdir -p "$SIM_DIR"
    if [ ! -e "$medium" ]; then
        command -v "$MKFS_FAT" >/dev/null 2>&1 ||
            { echo "flash.sh: missing: mkfs.fat ($MKFS_FAT) to create $medium: install it with: apt-get install dosfstools" >&2; exit 2; }
        echo "creating a ${MEDIUM_MIB} MiB FAT32 medium: $(show "${mkfs_cmd[@]}")" >&2
        "${mkfs_cmd[@]}" >/dev/null || die "could not create $medium"
    fi
    echo "starting the simulator; console at $SIM_DIR/appliance.tty, medium at $SIM_DIR/appliance.sock" >&2
    exec "${sim_cmd[@]}"
fi

# --- board ------------------------------------------------------------------

missing=()

if [ -z "$IMAGE" ]; then
    if ! command -v "$RUSTC" >/dev/null 2>&1; then
        missing+=("rustc ($RUSTC): install Rust with rustup, then: rustup target add $TARGET")
    else
        sysroot=$("$RUSTC" --print sysroot 2>/dev/null || true)
        if [ -z "$sysroot" ] || [ ! -d "$sysroot/lib/rustlib/$TARGET" ]; then
            missing+=("the Rust target $TARGET: install it with: rustup target add $TARGET")
        fi
    fi
    command -v "$CARGO" >/dev/null 2>&1 ||
        missing+=("cargo ($CARGO): install Rust with rustup")
    IMAGE="${CARGO_TARGET_DIR:-$REPO/target}/$TARGET/release/$BIN"
    build_cmd=("$CARGO" build --release -p "$PACKAGE" --bin "$BIN" --features "$BOARD" --target "$TARGET")
else
    [ -f "$IMAGE" ] || die "image $IMAGE does not exist"
    build_cmd=()
fi

if [ "$DFU" -eq 1 ]; then
    # STM32 system bootloader: USB DFU device 0483:df11, internal flash is
    # alternate setting 0; ":leave" starts the new firmware afterwards.
    if [ -z "$OBJCOPY" ]; then
        for c in rust-objcopy llvm-objcopy arm-none-eabi-objcopy; do
            if command -v "$c" >/dev/null 2>&1; then
                OBJCOPY=$c
                break
            fi
        done
    fi
    if [ -z "$OBJCOPY" ] || ! command -v "$OBJCOPY" >/dev/null 2>&1; then
        missing+=("objcopy (${OBJCOPY:-rust-objcopy}) to make a raw image: install it with: rustup component add llvm-tools && cargo install cargo-binutils (or: apt-get install binutils-arm-none-eabi)")
        OBJCOPY=${OBJCOPY:-rust-objcopy}
    fi
    command -v "$DFU_UTIL" >/dev/null 2>&1 ||
        missing+=("dfu-util ($DFU_UTIL): install it with: apt-get install dfu-util")
    # The raw image goes next to the stamps, never next to the user's ELF.
    RAW="$STAMP_DIR/$(basename "$IMAGE").bin"
    convert_cmd=("$OBJCOPY" -O binary "$IMAGE" "$RAW")
    flash_cmd=("$DFU_UTIL" -d 0483:df11 -a 0 -s 0x08000000:leave -D "$RAW")
    reset_cmd=()
    stamp_name="dfu-$CHIP"
    tool=dfu-util
else
    command -v "$PROBE_RS" >/dev/null 2>&1 ||
        missing+=("probe-rs ($PROBE_RS): install it with: cargo install probe-rs-tools --locked")
    probe_args=(--chip "$CHIP")
    stamp_name=$CHIP
    if [ -n "$PROBE" ]; then
        probe_args+=(--probe "$PROBE")
        stamp_name="$CHIP-$(printf '%s' "$PROBE" | tr -c 'A-Za-z0-9._-' '_')"
    fi
    convert_cmd=()
    flash_cmd=("$PROBE_RS" download --verify "${probe_args[@]}" "$IMAGE")
    reset_cmd=("$PROBE_RS" reset "${probe_args[@]}")
    tool=probe-rs
fi
STAMP="$STAMP_DIR/$stamp_name.sha256"

image_hash() {
    sha256sum "$1" | cut -d' ' -f1
}

# Prints the stamped hash, or nothing if there is no stamp.
stamped_hash() {
    if [ -f "$STAMP" ]; then
        cut -d' ' -f1 <"$STAMP"
    fi
}

if [ "$DRY_RUN" -eq 1 ]; then
    echo "plan (board $BOARD, chip $CHIP):"
    if [ "${#build_cmd[@]}" -gt 0 ]; then
        echo "  build: $(show "${build_cmd[@]}")"
    else
        echo "  build: skipped (--image given)"
    fi
    echo "  image: $IMAGE"
    if [ "${#convert_cmd[@]}" -gt 0 ]; then
        echo "  convert: $(show "${convert_cmd[@]}")"
    fi
    echo "  flash: $(show "${flash_cmd[@]}")"
    if [ "${#reset_cmd[@]}" -gt 0 ]; then
        echo "  reset: $(show "${reset_cmd[@]}")"
    fi
    echo "  stamp: $STAMP"
    if [ -f "$IMAGE" ]; then
        h=$(image_hash "$IMAGE")
        if [ "$h" = "$(stamped_hash)" ] && [ "$FORCE" -eq 0 ]; then
            echo "  would skip: image sha256 $h is identical to the last flashed image (use --force)"
        else
            echo "  would flash: image sha256 $h"
        fi
    else
        echo "  would flash: the image built by the build step"
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        for m in "${missing[@]}"; do
            echo "  missing: $m"
        done
        exit 2
    fi
    exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
    for m in "${missing[@]}"; do
        echo "flash.sh: missing: $m" >&2
    done
    exit 2
fi

if [ "${#build_cmd[@]}" -gt 0 ]; then
    echo "building: $(show "${build_cmd[@]}")" >&2
    (cd "$REPO" && "${build_cmd[@]}") || die "the firmware build failed (command above)"
    [ -f "$IMAGE" ] || die "the build succeeded but $IMAGE is missing"
fi

hash=$(image_hash "$IMAGE")
if [ "$FORCE" -eq 0 ] && [ "$hash" = "$(stamped_hash)" ]; then
    echo "flash.sh: $IMAGE (sha256 $hash) is identical to the last image flashed to $CHIP; not re-flashing. Use --force to flash anyway." >&2
    exit 3
fi

if [ "${#convert_cmd[@]}" -gt 0 ]; then
    mkdir -p "$STAMP_DIR"
    "${convert_cmd[@]}" || die "could not convert $IMAGE to a raw image (command: $(show "${convert_cmd[@]}"))"
fi
echo "flashing: $(show "${flash_cmd[@]}")" >&2
if [ "$DFU" -eq 1 ]; then
    "${flash_cmd[@]}" || die "dfu-util could not flash $RAW (is the board in its USB bootloader: BOOT0 held while plugging in?)"
else
    "${flash_cmd[@]}" || die "probe-rs could not flash $IMAGE (is the probe attached and the board powered?)"
    "${reset_cmd[@]}" || die "flashed, but probe-rs could not reset the chip"
fi

mkdir -p "$STAMP_DIR"
# Write the stamp atomically so an interrupted run never leaves a stamp that
# claims an image that was not flashed.
printf '%s  %s  %s\n' "$hash" "$IMAGE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
echo "flashed $IMAGE (sha256 $hash) to $CHIP with $tool" >&2
