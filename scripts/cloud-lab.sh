#!/bin/bash
# A real OpenStack-on-Ceph target on this one machine, offline: the cloud lab.
#
#   scripts/cloud-lab.sh start    # install (first time), bring everything up, print the env
#   scripts/cloud-lab.sh env      # print the `export` lines again (eval "$(... env)")
#   scripts/cloud-lab.sh status   # which daemons run, Ceph health, endpoints
#   scripts/cloud-lab.sh stop     # tear everything down by saved PID, undefine libvirt objects
#
# What runs (Debian 12 packages: Ceph 16, Cinder 21, Nova 26), all on 127.0.0.1, all under one
# work dir (MGEAR_CLOUD_LAB_DIR, default /var/tmp/mgear-cloud-lab):
#   Ceph      one mon, one mgr, one file-backed bluestore OSD, pool `volumes`, key client.cinder
#   MariaDB   the databases of Cinder, Nova and placement (SQLite locks under Nova's services)
#   RabbitMQ  the message bus of Cinder and Nova
#   Cinder    api (noauth_include_project_id, :8776), scheduler, volume (RBD backend)
#   Nova      placement (noauth2, :8778), api (noauth2, :8774), conductor, scheduler, compute
#             (libvirt, virt_type=qemu, no Neutron: servers are created with networks "none")
#   libvirt   started by scripts/libvirtd.sh; the lab defines the `ceph` secret Nova's disks use
#
# Why this shape: no systemd (every daemon runs in the foreground, backgrounded here, PID kept in
# $LAB/pids in start order), no Keystone (noauth modes; requests carry
# `X-Auth-Token: admin:<project>`), no Neutron (Nova's GET /servers/<id> answers 500: poll the
# instance actions or the console log instead). /work/shared/CLOUD-LAB.md (and the README's
# "Cloud lab" section) list the traps. Must run as root. Every wait has a deadline and names the
# log to read when it expires.
set -euo pipefail
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

LAB=${MGEAR_CLOUD_LAB_DIR:-/var/tmp/mgear-cloud-lab}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OSD_SIZE=${MGEAR_CLOUD_LAB_OSD_SIZE:-20G}
DB_PORT=${MGEAR_CLOUD_LAB_DB_PORT:-3306}
CINDER_PORT=8776
NOVA_PORT=8774
PLACEMENT_PORT=8778
NEUTRON_PORT=9696
RABBIT_PORT=5672
VIRSH="virsh -c qemu:///system"

CEPH_PKGS=(ceph-mon ceph-mgr ceph-osd ceph-common python3-rbd python3-rados qemu-block-extra)
CLOUD_PKGS=(rabbitmq-server mariadb-server python3-pymysql
    cinder-api cinder-scheduler cinder-volume python3-cinderclient
    nova-api nova-conductor nova-scheduler nova-compute placement-api
    libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils curl uuid-runtime)

die() {
    echo "cloud-lab.sh: $*" >&2
    exit 1
}
say() { echo "cloud-lab: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Phase timing: each phase prints how long it took, and the totals land in $LAB/timings.
PHASE=""
PHASE_T0=0
phase() {
    phase_end
    PHASE=$1
    PHASE_T0=$(date +%s.%N)
    say "$PHASE ..."
}
phase_end() {
    [ -n "$PHASE" ] || return 0
    local secs
    secs=$(awk -v a="$(date +%s.%N)" -v b="$PHASE_T0" 'BEGIN {print a - b}')
    printf 'cloud-lab: %-22s %6.1f s\n' "$PHASE" "$secs" >&2
    [ -d "$LAB" ] && printf '%s %.1f\n' "$PHASE" "$secs" >>"$LAB/timings"
    PHASE=""
}

# wait_for DEADLINE_SECONDS WHAT LOGFILE COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local deadline=$1 what=$2 log=$3
    shift 3
    local end=$(($(date +%s) + deadline))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then
            echo "cloud-lab.sh: $what not ready within ${deadline} s; read $log" >&2
            [ -f "$log" ] && tail -n 15 "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

# wait_quiet DEADLINE_SECONDS COMMAND...: like wait_for, but returns 1 instead of exiting.
wait_quiet() {
    local end=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# spawn NAME LOG COMMAND...: run a daemon in the foreground of a background job, keep its PID.
spawn() {
    local name=$1 log=$2
    shift 2
    setsid "$@" </dev/null >>"$log" 2>&1 &
    local pid=$!
    local n
    n=$(find "$LAB/pids" -name '*.pid' | wc -l)
    printf '%s\n' "$pid" >"$LAB/pids/$(printf '%02d' "$n")-$name.pid"
}

alive() {
    local f=$1
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# A daemon that died while we waited for it: say so at once instead of waiting out the deadline.
ensure_alive() {
    local name=$1 log=$2 f
    f=$(find "$LAB/pids" -name "*-$name.pid" | head -n 1)
    [ -n "$f" ] && alive "$f" && return 0
    echo "cloud-lab.sh: $name exited during start; read $log" >&2
    tail -n 15 "$log" >&2 || true
    exit 1
}

running() {
    [ -d "$LAB/pids" ] || return 1
    local f any=1
    for f in "$LAB"/pids/*.pid; do
        [ -e "$f" ] || return 1
        alive "$f" || return 1
        any=0
    done
    [ -f "$LAB/env" ] && return "$any"
    return 1
}

# ---------------------------------------------------------------------------------------------
install_packages() {
    local missing=() p
    for p in "${CEPH_PKGS[@]}" "${CLOUD_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    phase "install packages"
    say "installing ${missing[*]}"
    # Postinst scripts try to start daemons; without systemd that fails or starts them with the
    # distribution's config on public addresses. policy-rc.d answering 101 forbids it.
    local made_policy=0
    if ! [ -x /usr/sbin/policy-rc.d ] || /usr/sbin/policy-rc.d x start >/dev/null 2>&1 ||
        [ $? -ne 101 ]; then
        if [ -e /usr/sbin/policy-rc.d ]; then
            cp -p /usr/sbin/policy-rc.d "$LAB/policy-rc.d.saved"
        fi
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    # The packages' own database setup (dbconfig-common) would want a running server.
    debconf-set-selections <<'EOF'
cinder-common cinder/configure_db boolean false
nova-common nova/configure_db boolean false
placement-common placement/configure_db boolean false
EOF
    local rc=0
    # A dpkg run cut off before (an earlier start stopped while it installed) refuses every
    # install until it is configured ("dpkg was interrupted").
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a >"$LAB/logs/apt.log" 2>&1 || true
    # ./test.sh runs scripts/deps.sh's apt beside this one: wait for dpkg's lock, never fail on it.
    # In a session of its own: a start stopped half-way (./test.sh ending early signals the
    # lab's process group) must not cut dpkg off mid-install; apt-get finishes on its own.
    setsid -w env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=1200 install -y \
        --no-install-recommends "${missing[@]}" \
        >>"$LAB/logs/apt.log" 2>&1 </dev/null || rc=$?
    if [ "$made_policy" = 1 ]; then
        if [ -e "$LAB/policy-rc.d.saved" ]; then
            mv "$LAB/policy-rc.d.saved" /usr/sbin/policy-rc.d
        else
            rm -f /usr/sbin/policy-rc.d
        fi
    fi
    [ "$rc" = 0 ] && return 0
    # Say exactly which packages are still missing: the test suite fails on this, it never skips.
    local still=()
    for p in "${missing[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || still+=("$p")
    done
    tail -n 15 "$LAB/logs/apt.log" >&2 || true
    die "apt-get install failed (exit $rc); still missing: ${still[*]}; read $LAB/logs/apt.log (try apt-get update first)"
}

# ---------------------------------------------------------------------------------------------
CEPH_DIR=""
CONF=""
ceph_() { ceph -c "$CONF" --connect-timeout 10 "$@"; }

start_ceph() {
    CEPH_DIR=$LAB/ceph
    CONF=$CEPH_DIR/ceph.conf
    local fsid
    fsid=$(uuidgen)
    mkdir -p "$CEPH_DIR"/{run,log,keyring,mon/ceph-a,mgr/ceph-x,osd/ceph-0}
    # oslo-style trap avoided here too: no trailing comments on value lines.
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_initial_members = a
mon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public_network = 127.0.0.0/8
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_autoscale_mode = off
run_dir = $CEPH_DIR/run
admin_socket = $CEPH_DIR/run/\$cluster-\$name.asok
log_file = $CEPH_DIR/log/\$cluster-\$name.log
mon_data = $CEPH_DIR/mon/\$cluster-\$id
mgr_data = $CEPH_DIR/mgr/\$cluster-\$id
osd_data = $CEPH_DIR/osd/\$cluster-\$id

[mon]
keyring = \$mon_data/keyring

[mgr]
keyring = \$mgr_data/keyring

[osd]
keyring = \$osd_data/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$OSD_SIZE")
osd_memory_target = 943718400

[client]
keyring = $CEPH_DIR/keyring/\$cluster.\$name.keyring
EOF
    local kr=$CEPH_DIR/keyring
    ceph-authtool --create-keyring "$kr/ceph.mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$kr/ceph.client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$kr/ceph.mon.keyring" --import-keyring "$kr/ceph.client.admin.keyring" >/dev/null
    monmaptool --create --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' --fsid "$fsid" \
        "$CEPH_DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$kr/ceph.mon.keyring" \
        >>"$LAB/logs/ceph-setup.log" 2>&1 || die "ceph-mon --mkfs failed; read $LAB/logs/ceph-setup.log"
    spawn ceph-mon "$LAB/logs/ceph-mon.log" ceph-mon -c "$CONF" -f -i a
    wait_for 60 "ceph-mon" "$CEPH_DIR/log/ceph-mon.a.log" ceph_ mon stat

    ceph_ auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$CEPH_DIR/mgr/ceph-x/keyring" >/dev/null
    spawn ceph-mgr "$LAB/logs/ceph-mgr.log" ceph-mgr -c "$CONF" -f -i x

    local osd_uuid id
    osd_uuid=$(uuidgen)
    id=$(ceph_ osd new "$osd_uuid")
    [ "$id" = 0 ] || die "ceph osd new gave id '$id', expected 0 (a leftover cluster?); read $LAB/logs/ceph-setup.log"
    # Without --no-mon-config mkfs fails with "failed to fetch mon config".
    ceph-osd -c "$CONF" -i 0 --mkfs --mkkey --osd-uuid "$osd_uuid" --no-mon-config \
        >>"$LAB/logs/ceph-setup.log" 2>&1 || die "ceph-osd --mkfs failed; read $LAB/logs/ceph-setup.log"
    [ -s "$CEPH_DIR/osd/ceph-0/keyring" ] || die "ceph-osd --mkfs wrote no keyring; read $LAB/logs/ceph-setup.log"
    ceph_ auth add osd.0 osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
        -i "$CEPH_DIR/osd/ceph-0/keyring" >/dev/null 2>&1
    spawn ceph-osd "$LAB/logs/ceph-osd.log" ceph-osd -c "$CONF" -f -i 0
    wait_for 90 "ceph-osd" "$CEPH_DIR/log/ceph-osd.0.log" osd_up

    ceph_ osd pool create volumes 32 32 >/dev/null 2>&1
    ceph_ osd pool set volumes size 1 --yes-i-really-mean-it >/dev/null 2>&1
    rbd -c "$CONF" pool init volumes
    ceph_ auth get-or-create client.cinder mon 'profile rbd' osd 'profile rbd pool=volumes' \
        mgr 'profile rbd pool=volumes' -o "$kr/ceph.client.cinder.keyring" >/dev/null
    # The manager becomes active 15-25 s after the OSD: HEALTH_OK before that means little.
    wait_for 120 "ceph-mgr (active)" "$CEPH_DIR/log/ceph-mgr.x.log" mgr_available
    if ! wait_quiet 120 health_ok; then
        ceph_ health detail >&2 || true
        die "ceph did not reach HEALTH_OK within 120 s; read $CEPH_DIR/log/ceph-mon.a.log"
    fi
}
osd_up() { ceph_ osd stat 2>/dev/null | grep -q '1 up'; }
mgr_available() { ceph_ mgr stat 2>/dev/null | grep -q '"available": true'; }
health_ok() { ceph_ health 2>/dev/null | grep -q HEALTH_OK; }

# ---------------------------------------------------------------------------------------------
start_mariadb() {
    local d=$LAB/mysql
    mkdir -p "$d/data" "$d/run"
    mariadb-install-db --no-defaults --user=root --datadir="$d/data" --skip-test-db \
        >>"$LAB/logs/mariadb-setup.log" 2>&1 || die "mariadb-install-db failed; read $LAB/logs/mariadb-setup.log"
    spawn mariadbd "$LAB/logs/mariadb.log" mariadbd --no-defaults --user=root --datadir="$d/data" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$d/run/mysqld.sock" \
        --pid-file="$d/run/mysqld.pid" --log-error="$LAB/logs/mariadb.log" --skip-name-resolve \
        --innodb-buffer-pool-size=64M --max-connections=500
    wait_for 60 "mariadb" "$LAB/logs/mariadb.log" mariadb --no-defaults -uroot --socket="$d/run/mysqld.sock" -e 'select 1'
    mariadb --no-defaults -uroot --socket="$d/run/mysqld.sock" <<EOF
CREATE USER IF NOT EXISTS 'mgear'@'127.0.0.1' IDENTIFIED BY 'mgear';
CREATE DATABASE IF NOT EXISTS cinder;
CREATE DATABASE IF NOT EXISTS nova_api;
CREATE DATABASE IF NOT EXISTS nova;
CREATE DATABASE IF NOT EXISTS nova_cell0;
CREATE DATABASE IF NOT EXISTS placement;
GRANT ALL PRIVILEGES ON *.* TO 'mgear'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}
db_url() { echo "mysql+pymysql://mgear:mgear@127.0.0.1:$DB_PORT/$1"; }

# ---------------------------------------------------------------------------------------------
start_rabbitmq() {
    local d=$LAB/rabbitmq
    mkdir -p "$d/mnesia" "$d/log" "$d/home"
    : >"$d/enabled_plugins"
    echo '[].' >"$d/enabled_plugins"
    # epmd first, ours, on loopback, so its PID is known (erl would daemonise one of its own).
    spawn epmd "$LAB/logs/epmd.log" env ERL_EPMD_ADDRESS=127.0.0.1 HOME="$d/home" epmd -address 127.0.0.1
    wait_for 20 "epmd" "$LAB/logs/epmd.log" port_open 4369
    spawn rabbitmq "$LAB/logs/rabbitmq.log" env HOME="$d/home" \
        RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=$RABBIT_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/rabbit.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
        /usr/lib/rabbitmq/bin/rabbitmq-server
    wait_for 90 "rabbitmq" "$d/log/rabbit@localhost.log" port_open "$RABBIT_PORT"
    # The wrapper's PID is not beam.smp's: keep beam's too so stop reaches the VM itself.
    local beam
    beam=$(cat "$d/rabbit.pid" 2>/dev/null || true)
    if [ -n "$beam" ]; then
        local n
        n=$(find "$LAB/pids" -name '*.pid' | wc -l)
        echo "$beam" >"$LAB/pids/$(printf '%02d' "$n")-rabbitmq-beam.pid"
    fi
}

# ---------------------------------------------------------------------------------------------
PROJECT=""
SECRET_UUID=""

start_libvirt() {
    "$HERE/libvirtd.sh" >>"$LAB/logs/libvirtd-setup.log" 2>&1 ||
        die "scripts/libvirtd.sh failed; read $LAB/logs/libvirtd-setup.log"
    # Nova does not create the ceph secret its rbd disks name: the operator does.
    cat >"$LAB/secret.xml" <<EOF
<secret ephemeral='no' private='no'>
  <uuid>$SECRET_UUID</uuid>
  <usage type='ceph'><name>mgear-cloud-lab client.cinder $SECRET_UUID</name></usage>
</secret>
EOF
    $VIRSH secret-define "$LAB/secret.xml" >/dev/null
    ceph_ auth get-key client.cinder >"$LAB/cinder.key"
    $VIRSH secret-set-value --secret "$SECRET_UUID" --file "$LAB/cinder.key" >/dev/null
}

# Since the fix of Cinder bug #2004555 an in-use attachment may only be deleted by a request
# carrying a service token with the `service` role: keystonemiddleware sets that role after
# validating the X-Service-Token Nova sends ([service_user] in nova.conf). Without Keystone,
# this filter, placed right after the noauth one, does the same for any service token, so
# Nova's detach on server delete works instead of leaving the volume in-use.
cinder_service_token_filter() {
    local d=$1
    mkdir -p "$d/python"
    cat >"$d/python/mgear_lab_service_token.py" <<'EOF'
class ServiceToken:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        ctx = environ.get("cinder.context")
        if ctx is not None and environ.get("HTTP_X_SERVICE_TOKEN"):
            ctx.service_roles = ["service"]
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    return ServiceToken
EOF
    sed -e 's/^\(noauth_include_project_id = .* noauth_include_project_id\) apiv3$/\1 mgear_service_token apiv3/' \
        /etc/cinder/api-paste.ini >"$d/api-paste.ini"
    grep -q 'mgear_service_token apiv3' "$d/api-paste.ini" ||
        die "/etc/cinder/api-paste.ini has no noauth_include_project_id pipeline to extend"
    printf '\n[filter:mgear_service_token]\npaste.filter_factory = mgear_lab_service_token:filter_factory\n' \
        >>"$d/api-paste.ini"
}

start_cinder() {
    local d=$LAB/cinder
    mkdir -p "$d/state" "$d/lock"
    cinder_service_token_filter "$d"
    cat >"$d/cinder.conf" <<EOF
[DEFAULT]
auth_strategy = noauth_include_project_id
transport_url = rabbit://guest:guest@127.0.0.1:$RABBIT_PORT/
my_ip = 127.0.0.1
host = mgear-cloud-lab
state_path = $d/state
api_paste_config = $d/api-paste.ini
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = $CINDER_PORT
osapi_volume_workers = 1
enabled_backends = ceph
default_volume_type = __DEFAULT__
log_dir = $LAB/logs
use_stderr = false

[database]
connection = $(db_url cinder)

[oslo_concurrency]
lock_path = $d/lock

[ceph]
volume_driver = cinder.volume.drivers.rbd.RBDDriver
volume_backend_name = ceph
rbd_pool = volumes
rbd_ceph_conf = $CONF
rbd_user = cinder
rbd_secret_uuid = $SECRET_UUID
rbd_flatten_volume_from_snapshot = false

# cinder-api tells Nova when an attachment goes (os-server-external-events). Without this it
# looks Nova up in a service catalog that does not exist and answers 500 to the detach,
# leaving the volume in-use after its server was deleted.
[nova]
auth_type = admin_token
endpoint = http://127.0.0.1:$NOVA_PORT/v2.1
token = admin:$PROJECT
EOF
    cinder-manage --config-file "$d/cinder.conf" db sync >>"$LAB/logs/cinder-setup.log" 2>&1 ||
        die "cinder-manage db sync failed; read $LAB/logs/cinder-setup.log"
    local svc
    for svc in api scheduler volume; do
        spawn "cinder-$svc" "$LAB/logs/cinder-$svc.out" env PYTHONPATH="$d/python" \
            "cinder-$svc" --config-file "$d/cinder.conf" --log-file "$LAB/logs/cinder-$svc.log"
    done
    wait_for 120 "cinder-api" "$LAB/logs/cinder-api.log" cinder_up
    wait_for 120 "cinder-volume (up in os-services)" "$LAB/logs/cinder-volume.log" cinder_volume_up
}
cinder_get() {
    curl -fsS --max-time 5 -H "X-Auth-Token: admin:$PROJECT" -H 'OpenStack-API-Version: volume 3.0' \
        "http://127.0.0.1:$CINDER_PORT/v3/$PROJECT/$1"
}
cinder_up() {
    ensure_alive cinder-api "$LAB/logs/cinder-api.log"
    cinder_get volumes
}
cinder_volume_up() {
    ensure_alive cinder-volume "$LAB/logs/cinder-volume.log"
    cinder_get os-services | grep -q '"binary": "cinder-volume", "host": "[^"]*@ceph"[^}]*"state": "up"'
}

start_nova() {
    local d=$LAB/nova p=$LAB/placement
    mkdir -p "$d/state" "$d/lock" "$d/instances" "$p"
    cat >"$p/placement.conf" <<EOF
[DEFAULT]
log_dir = $LAB/logs
log_file = placement-api.log
use_stderr = false

[api]
auth_strategy = noauth2

[placement_database]
connection = $(db_url placement)
EOF
    cat >"$d/nova.conf" <<EOF
[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:$RABBIT_PORT/
my_ip = 127.0.0.1
host = mgear-cloud-lab
state_path = $d/state
instances_path = $d/instances
enabled_apis = osapi_compute
osapi_compute_listen = 127.0.0.1
osapi_compute_listen_port = $NOVA_PORT
osapi_compute_workers = 1
compute_driver = libvirt.LibvirtDriver
log_dir = $LAB/logs
use_stderr = false
reserved_host_memory_mb = 256

[api]
auth_strategy = noauth2

[wsgi]
api_paste_config = /etc/nova/api-paste.ini

[api_database]
connection = $(db_url nova_api)

[database]
connection = $(db_url nova)

[conductor]
workers = 1

[scheduler]
workers = 1

[oslo_concurrency]
lock_path = $d/lock

[libvirt]
virt_type = qemu
connection_uri = qemu:///system
rbd_user = cinder
rbd_secret_uuid = $SECRET_UUID

[vnc]
enabled = false

[spice]
enabled = false

[placement]
auth_type = admin_token
endpoint = http://127.0.0.1:$PLACEMENT_PORT
token = admin

[service_user]
send_service_user_token = true
auth_type = admin_token
endpoint = http://127.0.0.1:$CINDER_PORT/v3
token = admin

[neutron]
auth_type = admin_token
endpoint = http://127.0.0.1:$NEUTRON_PORT
token = admin

[cinder]
auth_type = admin_token
endpoint = http://127.0.0.1:$CINDER_PORT/v3
token = admin:$PROJECT
endpoint_template = http://127.0.0.1:$CINDER_PORT/v3/%(project_id)s
EOF
    OS_PLACEMENT_CONFIG_DIR=$p placement-manage --config-file "$p/placement.conf" db sync \
        >>"$LAB/logs/nova-setup.log" 2>&1 || die "placement-manage db sync failed; read $LAB/logs/nova-setup.log"
    local nm=(nova-manage --config-file "$d/nova.conf")
    {
        "${nm[@]}" api_db sync &&
            "${nm[@]}" cell_v2 map_cell0 --database_connection "$(db_url nova_cell0)" &&
            "${nm[@]}" cell_v2 create_cell --name cell1 &&
            "${nm[@]}" db sync
    } >>"$LAB/logs/nova-setup.log" 2>&1 || die "nova-manage setup failed; read $LAB/logs/nova-setup.log"

    # nova-compute must not see the database settings (it logs "No DB access allowed").
    awk '/^\[/ { skip = ($0 == "[database]" || $0 == "[api_database]") } !skip' \
        "$d/nova.conf" >"$d/nova-compute.conf"
    start_neutron_stub
    spawn placement-api "$LAB/logs/placement-api.out" env OS_PLACEMENT_CONFIG_DIR="$p" \
        placement-api --host 127.0.0.1 --port "$PLACEMENT_PORT"
    local svc
    local conf
    for svc in api conductor scheduler compute; do
        conf=$d/nova.conf
        [ "$svc" = compute ] && conf=$d/nova-compute.conf
        spawn "nova-$svc" "$LAB/logs/nova-$svc.out" "nova-$svc" --config-file "$conf" \
            --log-file "$LAB/logs/nova-$svc.log"
    done
    wait_for 60 "placement-api" "$LAB/logs/placement-api.out" placement_up
    wait_for 120 "nova-api" "$LAB/logs/nova-api.log" nova_up
    wait_for 180 "nova-compute (resource provider in placement)" "$LAB/logs/nova-compute.log" compute_registered
    wait_for 120 "nova cell host mapping" "$LAB/logs/nova-setup.log" discover_hosts
}
# Nova asks Neutron about ports and security groups on server show and delete even when the
# server has networks "none"; without an answer GET /servers/<id> is a 500 and delete leaves
# the instance in ERROR. There are no Neutron packages to run here: this stub answers every
# list with an empty one (no ports, no security groups, no extensions) and every item with 404.
start_neutron_stub() {
    cat >"$LAB/neutron-stub.py" <<'EOF'
import json, re, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

class Stub(BaseHTTPRequestHandler):
    def answer(self, code, body):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        last = path.rsplit("/", 1)[-1]
        if last.endswith(".json"):
            last = last[:-5]
        if path in ("", "/"):
            self.answer(200, {"versions": [{"id": "v2.0", "status": "CURRENT"}]})
        elif UUID.match(last):
            self.answer(404, {"NeutronError": {"type": "NotFound",
                "message": "no such object in the lab's Neutron stub", "detail": ""}})
        else:
            self.answer(200, {last.replace("-", "_"): []})

    def do_DELETE(self):
        self.answer(204, None)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Stub).serve_forever()
EOF
    spawn neutron-stub "$LAB/logs/neutron-stub.log" /usr/bin/python3 "$LAB/neutron-stub.py" "$NEUTRON_PORT"
    wait_for 20 "neutron stub" "$LAB/logs/neutron-stub.log" port_open "$NEUTRON_PORT"
}
placement_up() {
    ensure_alive placement-api "$LAB/logs/placement-api.out"
    curl -fsS --max-time 5 -H 'X-Auth-Token: admin' "http://127.0.0.1:$PLACEMENT_PORT/"
}
nova_up() {
    ensure_alive nova-api "$LAB/logs/nova-api.log"
    curl -fsS --max-time 5 -H "X-Auth-Token: admin:$PROJECT" "http://127.0.0.1:$NOVA_PORT/v2.1/flavors"
}
compute_registered() {
    ensure_alive nova-compute "$LAB/logs/nova-compute.log"
    curl -fsS --max-time 5 -H 'X-Auth-Token: admin' \
        "http://127.0.0.1:$PLACEMENT_PORT/resource_providers" | grep -q '"uuid"'
}
discover_hosts() {
    nova-manage --config-file "$LAB/nova/nova.conf" cell_v2 discover_hosts >>"$LAB/logs/nova-setup.log" 2>&1
    nova-manage --config-file "$LAB/nova/nova.conf" cell_v2 list_hosts 2>/dev/null | grep -q mgear-cloud-lab
}

# ---------------------------------------------------------------------------------------------
write_env() {
    cat >"$LAB/env" <<EOF
export MGEAR_CLOUD_LAB=$LAB
export CEPH_CONF=$CONF
export MGEAR_CLOUD_RBD_POOL=volumes
export MGEAR_CLOUD_RBD_USER=cinder
export MGEAR_CLOUD_NOVA_INSTANCES=$LAB/nova/instances
export OS_AUTH_TYPE=noauth
export OS_PROJECT_ID=$PROJECT
export OS_USER_ID=admin
export OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE=http://127.0.0.1:$CINDER_PORT/v3/$PROJECT
export OS_COMPUTE_ENDPOINT_OVERRIDE=http://127.0.0.1:$NOVA_PORT/v2.1
export OS_PLACEMENT_ENDPOINT_OVERRIDE=http://127.0.0.1:$PLACEMENT_PORT
export OS_VOLUME_API_VERSION=3
export CINDERCLIENT_BYPASS_URL=http://127.0.0.1:$CINDER_PORT/v3/$PROJECT
EOF
}

cmd_start() {
    [ "$(id -u)" = 0 ] || die "run as root (libvirt's system daemon, packages, Ceph)"
    if running; then
        cat "$LAB/env"
        return 0
    fi
    if [ -d "$LAB/pids" ] && [ -n "$(ls -A "$LAB/pids" 2>/dev/null)" ]; then
        say "a previous lab is partly running or dead: stopping it first"
        cmd_stop
    fi
    local t0
    t0=$(date +%s.%N)
    rm -rf "$LAB"
    mkdir -p "$LAB/pids" "$LAB/logs"
    : >"$LAB/timings"
    install_packages
    phase "check ports"
    local port
    for port in 3300 6789 "$DB_PORT" "$RABBIT_PORT" 4369 25672 "$CINDER_PORT" "$NOVA_PORT" "$PLACEMENT_PORT" \
        "$NEUTRON_PORT"; do
        port_open "$port" && die "port $port on 127.0.0.1 is taken: another lab or service runs (ss -ltnp 'sport = :$port')"
    done
    # Cinder's noauth_include_project_id needs a hex project id (/v3/admin/... is a bare 404).
    PROJECT=$(uuidgen | tr -d -)
    SECRET_UUID=$(uuidgen)
    echo "$PROJECT" >"$LAB/project"
    echo "$SECRET_UUID" >"$LAB/secret-uuid"
    phase "ceph"
    start_ceph
    phase "mariadb"
    start_mariadb
    phase "rabbitmq"
    start_rabbitmq
    phase "libvirt + ceph secret"
    start_libvirt
    phase "cinder"
    start_cinder
    phase "nova + placement"
    start_nova
    phase_end
    write_env
    local total
    total=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {print a - b}')
    printf 'total %.1f\n' "$total" >>"$LAB/timings"
    printf 'cloud-lab: up in %.1f s; RSS of the lab: %s MiB\n' "$total" "$(lab_rss)" >&2
    cat "$LAB/env"
}

lab_rss() {
    local f pids=()
    for f in "$LAB"/pids/*.pid; do
        [ -e "$f" ] && pids+=("$(cat "$f")")
    done
    [ "${#pids[@]}" -gt 0 ] || {
        echo 0
        return
    }
    # Children too (cinder/nova spawn workers; the rabbit wrapper runs beam).
    local all
    all=$(for p in "${pids[@]}"; do echo "$p"; pgrep -P "$p" || true; done | sort -u | paste -sd,)
    ps -o rss= -p "$all" | awk '{s += $1} END {printf "%d", s / 1024}'
}

stop_pid() {
    local f=$1 pid name
    pid=$(cat "$f")
    name=$(basename "$f" .pid)
    if kill -0 "$pid" 2>/dev/null; then
        # setsid made each daemon a group leader: the group takes its workers along.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) ignored SIGTERM for 15 s: SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

cmd_stop() {
    [ -d "$LAB" ] || {
        say "nothing to stop ($LAB does not exist)"
        return 0
    }
    local t0
    t0=$(date +%s)
    # Nova leaves persistent domains behind (instance-0000000N). Ours are the ones whose
    # console log lies in this lab's instances dir; other domains on this libvirtd are left be.
    local dom
    while read -r dom; do
        [ -n "$dom" ] || continue
        $VIRSH dumpxml "$dom" 2>/dev/null | grep -qF "$LAB/nova/instances/" || continue
        $VIRSH destroy "$dom" >/dev/null 2>&1 || true
        $VIRSH undefine "$dom" --nvram >/dev/null 2>&1 || $VIRSH undefine "$dom" >/dev/null 2>&1 || true
        say "removed libvirt domain $dom"
    done < <($VIRSH list --all --name 2>/dev/null || true)
    local f tier=()
    if [ -d "$LAB/pids" ]; then
        # The OpenStack services (and the stub) need nothing from one another to shut down and
        # take seconds each: stop them together, then the rest one by one, newest first.
        while read -r f; do
            tier+=("$f")
        done < <(find "$LAB/pids" \( -name '*-cinder-*.pid' -o -name '*-nova-*.pid' \
            -o -name '*-placement-api.pid' -o -name '*-neutron-stub.pid' \) | sort -r)
        for f in "${tier[@]}"; do
            stop_pid "$f" &
        done
        wait
        while read -r f; do
            stop_pid "$f"
        done < <(find "$LAB/pids" -name '*.pid' | sort -r)
    fi
    if [ -s "$LAB/secret-uuid" ]; then
        $VIRSH secret-undefine "$(cat "$LAB/secret-uuid")" >/dev/null 2>&1 || true
    fi
    say "stopped in $(($(date +%s) - t0)) s (work dir $LAB kept for its logs; start wipes it)"
}

cmd_status() {
    if [ -z "$(ls -A "$LAB/pids" 2>/dev/null)" ]; then
        echo "cloud lab: not running ($LAB)"
        return 1
    fi
    local f rc=0
    for f in "$LAB"/pids/*.pid; do
        [ -e "$f" ] || continue
        if alive "$f"; then
            printf '  %-22s pid %-8s running\n' "$(basename "$f" .pid | cut -d- -f2-)" "$(cat "$f")"
        else
            printf '  %-22s pid %-8s DEAD\n' "$(basename "$f" .pid | cut -d- -f2-)" "$(cat "$f")"
            rc=1
        fi
    done
    if [ -f "$LAB/ceph/ceph.conf" ]; then
        CONF=$LAB/ceph/ceph.conf
        echo "  ceph: $(ceph_ health 2>&1 | head -n 1)"
    fi
    echo "  RSS: $(lab_rss) MiB"
    [ -f "$LAB/timings" ] && sed 's/^/  time: /' "$LAB/timings"
    return "$rc"
}

cmd_env() {
    running || die "the lab is not running: scripts/cloud-lab.sh start"
    cat "$LAB/env"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
