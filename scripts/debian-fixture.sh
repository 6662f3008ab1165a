#!/usr/bin/env bash
# Builds the fixture of the driver-adaptation test (tests/tests/adapt_e2e.rs):
# a real Debian 12 installed with debootstrap onto a 2 GiB sparse raw disk
# (MBR, one ext4 partition, grub-pc in the MBR, linux-image-amd64) whose
# initramfs holds only IDE/SATA drivers (initramfs-tools MODULES=list), so it
# boots on an IDE disk and not on virtio. A systemd unit prints
#     MGEAR-FIXTURE-UP root=<root device>
# on the serial console once the system is up; a getty on ttyS0 prints `login:`.
#
# The disk is built once per machine and cached under
# ${MGEAR_FIXTURE_DIR:-/var/tmp/mgear-fixtures}, keyed by a hash of this
# script (edit the script and it is rebuilt). The path is printed on stdout.
# Needs root (loop devices, mount, chroot) and the Debian mirror apt uses
# (override with MGEAR_DEBIAN_MIRROR); nothing else is fetched.
#
# Usage: scripts/debian-fixture.sh        -> /var/tmp/mgear-fixtures/debian12-ide-<hash>.raw
set -euo pipefail

die() {
    echo "debian-fixture: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "needs root (loop devices, mount, chroot): run it as root or with sudo"
for t in debootstrap sfdisk losetup mkfs.ext4 mount chroot flock blkid fstrim; do
    command -v "$t" >/dev/null || die "$t not found: apt-get install debootstrap fdisk mount e2fsprogs util-linux"
done

cache="${MGEAR_FIXTURE_DIR:-/var/tmp/mgear-fixtures}"
key=$(sha256sum "$0" | cut -c1-16)
out="$cache/debian12-ide-$key.raw"
mkdir -p "$cache"

# Tests run in parallel: one build, the others wait for it.
exec 9>"$cache/.lock"
flock 9
if [[ -f "$out" ]]; then
    echo "$out"
    exit 0
fi

# The mirror apt already uses (deb822 or one-line format), else deb.debian.org.
mirror="${MGEAR_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' || true)
fi
if [[ -z "$mirror" ]]; then
    mirror=$(awk '/^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }' \
        /etc/apt/sources.list 2>/dev/null || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"

work=$(mktemp -d "$cache/build.XXXXXX")
root="$work/root"
img="$work/disk.raw"
disk_loop=""
part_loop=""
cleanup() {
    set +e
    for m in dev/pts dev proc sys; do
        mountpoint -q "$root/$m" && umount -l "$root/$m"
    done
    mountpoint -q "$root" && umount "$root"
    [[ -n "$part_loop" ]] && losetup -d "$part_loop"
    [[ -n "$disk_loop" ]] && losetup -d "$disk_loop"
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> building $out (Debian bookworm from $mirror; takes a few minutes, once)" >&2
truncate -s 2G "$img"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$img"
# Without udev no partition nodes appear (losetup -P), so the partition gets
# its own loop device at its offset; the whole disk is one too, for GRUB.
disk_loop=$(losetup --show -f "$img")
part_loop=$(losetup --show -f -o $((2048 * 512)) "$img")
mkfs.ext4 -q -L mgear-root "$part_loop"
uuid=$(blkid -s UUID -o value "$part_loop")
mkdir -p "$root"
mount "$part_loop" "$root"

debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,initramfs-tools,zstd \
    bookworm "$root" "$mirror" >&2

# Only IDE/SATA drivers in the initramfs: what a disk from an old physical or
# VMware host often has. virtio_blk/virtio_pci/virtio_scsi are left out.
mkdir -p "$root/etc/initramfs-tools/conf.d"
cat >"$root/etc/initramfs-tools/conf.d/mgear-ide-only.conf" <<'EOF'
MODULES=list
RESUME=none
EOF
cat >"$root/etc/initramfs-tools/modules" <<'EOF'
# MotionGear fixture: IDE/SATA only, no virtio.
libata
ata_piix
ata_generic
pata_acpi
ahci
scsi_mod
sd_mod
crc16
mbcache
jbd2
ext4
EOF
echo mgear-fixture >"$root/etc/hostname"
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" >"$root/etc/fstab"
mkdir -p "$root/etc/default/grub.d"
cat >"$root/etc/default/grub.d/mgear-serial.cfg" <<'EOF'
GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
cat >"$root/etc/systemd/system/mgear-fixture-up.service" <<'EOF'
[Unit]
Description=Tell the MotionGear test the system is up
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "MGEAR-FIXTURE-UP root=$(findmnt -no SOURCE /)" >/dev/ttyS0'
[Install]
WantedBy=default.target
EOF
ln -sf /etc/systemd/system/mgear-fixture-up.service \
    "$root/etc/systemd/system/multi-user.target.wants/mgear-fixture-up.service"

# A private /dev for the chroot (the host's has no /dev/disk/by-uuid without
# udev, and grub-mkconfig only writes root=UUID= when that link exists).
mount -t tmpfs -o mode=0755 dev "$root/dev"
for n in null zero full random urandom tty console ptmx "$disk_loop" "$part_loop"; do
    cp -a "/dev/${n#/dev/}" "$root/dev/"
done
mkdir -p "$root/dev/pts" "$root/dev/disk/by-uuid"
ln -s "../../$(basename "$part_loop")" "$root/dev/disk/by-uuid/$uuid"
mount -t devpts devpts "$root/dev/pts"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"

in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
in_root apt-get install -y -q --no-install-recommends linux-image-amd64 grub-pc >&2
in_root grub-install --target=i386-pc --modules="part_msdos ext2" "$disk_loop" >&2
# grub-mkconfig's 10_linux skips a root on a file-backed loop device; name the
# root by UUID for this one run (the guest keeps no trace of it).
echo "GRUB_DEVICE=/dev/disk/by-uuid/$uuid" >"$root/etc/default/grub.d/zz-mgear-build.cfg"
in_root update-grub >&2
rm "$root/etc/default/grub.d/zz-mgear-build.cfg"
in_root apt-get clean

# Refuse to cache a fixture that does not prove anything.
initrd=$(find "$root/boot" -name 'initrd.img-*' | head -n1)
[[ -n "$initrd" ]] || die "no initramfs was built"
listing=$(in_root lsinitramfs "/boot/$(basename "$initrd")")
grep -q 'ata_piix' <<<"$listing" || die "ata_piix is not in $initrd"
if grep -E 'virtio_(blk|pci|scsi)' <<<"$listing" >&2; then
    die "virtio drivers ended up in $initrd"
fi
if ! grep -q "root=UUID=$uuid" "$root/boot/grub/grub.cfg"; then
    grep -E '^\s*(linux|search|menuentry)' "$root/boot/grub/grub.cfg" >&2 || true
    die "grub.cfg does not boot root=UUID=$uuid"
fi

for m in dev/pts dev proc sys; do umount "$root/$m"; done
# Give freed blocks (apt lists, caches) back to the sparse file.
fstrim "$root" >/dev/null || true
umount "$root"
losetup -d "$part_loop"
part_loop=""
losetup -d "$disk_loop"
disk_loop=""
mv "$img" "$out"
# Fixtures of earlier versions of this script are stale now.
find "$cache" -maxdepth 1 -name 'debian12-ide-*.raw' ! -path "$out" -delete
echo "$out"
