#!/usr/bin/env bash
# Shared by ./demo.sh and ./test.sh: make sure the Debian packages and the
# Rust toolchain MotionGear needs are present, installing them with apt-get
# when running as root, or saying exactly what to install otherwise.
#
# Usage: scripts/deps.sh demo|test
set -euo pipefail

mode="${1:-test}"

# Tools the demo needs: build a bootable disk (mkfs.ext4, grub-mkimage,
# busybox, a kernel), FAT32 media (mkfs.fat / fsck.fat), QEMU to boot.
demo_pkgs=(qemu-system-x86 qemu-utils busybox-static linux-image-amd64 grub-pc-bin
    dosfstools e2fsprogs fdisk cpio kmod zstd xz-utils)
# The test suite also talks to real NBD peers and lints flash.sh.
test_pkgs=("${demo_pkgs[@]}" nbdkit libnbd-bin shellcheck mtools ovmf age
    libvirt-daemon-system libvirt-clients)
# Driver adaptation (`ingest --adapt` runs virt-v2v-in-place; virt-v2v also
# needs nbdkit, listed above) and its Debian test fixture (debootstrap).
test_pkgs+=(virt-v2v debootstrap)

if [[ "$mode" == demo ]]; then pkgs=("${demo_pkgs[@]}"); else pkgs=("${test_pkgs[@]}"); fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

# Some machine images ship qemu-utils from bookworm-backports (QEMU 10), which
# Breaks the bookworm qemu-system-common that qemu-system-x86, libguestfs and
# virt-v2v need, so apt refuses ("held broken packages"). Install the whole
# QEMU family from one release: bookworm's own.
qemu_pins=()
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo'; then
    qemu_pins=(qemu-utils/bookworm qemu-block-extra/bookworm)
fi

if ((${#missing[@]})) || ((${#qemu_pins[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Another apt (the cloud lab's installer, which ./test.sh starts beside this one,
        # or unattended-upgrades) may hold dpkg's lock: wait for it instead of failing.
        apt-get -o DPkg::Lock::Timeout=1200 update -qq
        apt-get -o DPkg::Lock::Timeout=1200 install -y -qq --no-install-recommends --allow-downgrades \
            "${qemu_pins[@]}" "${missing[@]}" >/dev/null
    else
        echo "MotionGear needs these Debian packages, which are not installed:" >&2
        echo "    sudo apt-get install --allow-downgrades ${qemu_pins[*]} ${missing[*]}" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "MotionGear is built with Rust (cargo 1.80 or newer), which is not installed." >&2
    echo "    install it with rustup (https://rustup.rs) or: sudo apt-get install cargo" >&2
    exit 1
fi
