#!/bin/sh
# Start libvirt by hand (no systemd here) and make sure the `mgear` storage pool exists.
#
# Installs nothing: needs the Debian packages libvirt-daemon-system and libvirt-clients.
# Idempotent: daemons already running are left alone, an existing pool is only started.
#
#   scripts/libvirtd.sh            # pool directory /var/lib/mgear/pool
#   MGEAR_POOL_DIR=/tmp/p scripts/libvirtd.sh
#
# Must run as root (qemu:///system). Prints the pool name and directory on success.
set -eu
PATH=$PATH:/usr/sbin:/sbin

CONN=qemu:///system
POOL=${MGEAR_POOL:-mgear}
POOL_DIR=${MGEAR_POOL_DIR:-/var/lib/mgear/pool}

die() {
    echo "libvirtd.sh: $*" >&2
    exit 1
}

for tool in libvirtd virtlogd virsh; do
    command -v "$tool" >/dev/null 2>&1 ||
        [ -x "/usr/sbin/$tool" ] ||
        die "$tool not found: apt-get install libvirt-daemon-system libvirt-clients"
done

[ "$(id -u)" = 0 ] || die "run as root: $CONN needs the system daemon"

# A pid file whose process is alive means the daemon runs; a stale one is ignored.
running() {
    pidfile=$1
    [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

mkdir -p /run/libvirt
# virtlogd first: libvirtd hands it the QEMU stdout/stderr logs.
running /run/virtlogd.pid || virtlogd -d
running /run/libvirtd.pid || libvirtd -d

tries=0
until virsh -c "$CONN" version >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 60 ] || die "libvirtd did not answer on $CONN within 30 s"
    sleep 0.5
done

if ! virsh -c "$CONN" pool-info "$POOL" >/dev/null 2>&1; then
    mkdir -p "$POOL_DIR"
    virsh -c "$CONN" pool-define-as "$POOL" dir --target "$POOL_DIR" >/dev/null
fi
if ! virsh -c "$CONN" pool-info "$POOL" | grep -q '^State:.*running'; then
    virsh -c "$CONN" pool-build "$POOL" >/dev/null 2>&1 || true
    virsh -c "$CONN" pool-start "$POOL" >/dev/null
fi
virsh -c "$CONN" pool-autostart "$POOL" >/dev/null 2>&1 || true
dir=$(virsh -c "$CONN" pool-dumpxml "$POOL" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -n 1)
echo "libvirt pool $POOL ready at $dir ($CONN)"
