#!/bin/sh
# shellcheck shell=sh
# /init of the test VM's initramfs (built by tests/vm/image.sh, booted by
# tests/vm/run.sh); runs under busybox sh as PID 1.
#
# Channels to the host: ttyS0 is the kernel console (run.sh keeps it in a
# log); the virtio-serial port named capdsm.job carries the job's stdout and
# stderr; ttyS1 carries the harness's status lines:
#   STEP <what> (uptime <s>)  a stage begins
#   READY <uptime>            rxe0 is up, the job starts
#   FAIL <message>            the harness failed; the job did not run
#   END <uptime>              the job ended
#   EXIT <status>             the job's exit status
# The kernel command line names the job's folder on the host
# (capdsm_job=PATH): job.sh (run with the host's bash inside the chroot) and
# conf (lines "out=HOST_DIR").
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

ST=/dev/ttyS1
LOWER=/mnt/lower
RW=/mnt/rw
ROOT=/mnt/root

say() { echo "$*" >"$ST"; }
halt() { sync; poweroff -f; sleep 5; }
fail() {
  say "FAIL $*"
  echo "vm-init: FAIL $*"
  dmesg | tail -n 25
  halt
}
step() { read -r up _ </proc/uptime; say "STEP $* (uptime $up)"; }

stty -F "$ST" raw -echo 2>/dev/null || true

job=
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case "$arg" in
    capdsm_job=*) job=${arg#capdsm_job=} ;;
  esac
done
[ -n "$job" ] || fail "no capdsm_job= on the kernel command line"

step "modules"
while read -r m; do
  [ -n "$m" ] || continue
  if ! err=$(insmod "/lib/modules/$m.ko" 2>&1); then
    fail "module $m failed to load: $err"
  fi
done </lib/modules/order

# The job's output port: /dev/vportNpM, found by its name.
jobout=
i=0
while :; do
  for p in /sys/class/virtio-ports/vport*; do
    [ -e "$p/name" ] || continue
    read -r name <"$p/name"
    if [ "$name" = capdsm.job ]; then jobout=/dev/${p##*/}; fi
  done
  if [ -n "$jobout" ] && [ -e "$jobout" ]; then break; fi
  i=$((i + 1))
  [ "$i" -le 50 ] || fail "the job's output port (virtio-serial capdsm.job) did not appear"
  sleep 0.1
done

step "network"
i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1))
  [ "$i" -le 50 ] || fail "eth0 did not appear (virtio_net)"
  sleep 0.1
done
ip link set lo up || fail "ip link set lo up"
ip addr add 10.0.2.15/24 dev eth0 || fail "ip addr add 10.0.2.15/24 dev eth0"
ip link set eth0 up || fail "ip link set eth0 up"

step "mount host root"
mkdir -p "$LOWER" "$RW" "$ROOT"
err=$(mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host "$LOWER" 2>&1) \
  || fail "mounting the host root over 9p failed: $err"
mount -t tmpfs -o mode=755 rw "$RW" || fail "tmpfs for the overlay"
mkdir -p "$RW/upper" "$RW/work"
err=$(mount -t overlay -o "lowerdir=$LOWER,upperdir=$RW/upper,workdir=$RW/work" overlay "$ROOT" 2>&1) \
  || fail "overlay over the host root failed: $err"
[ -d "$LOWER$job" ] || fail "job folder $job not visible through 9p"
mkdir -p /job
cat "$LOWER$job/job.sh" >/job/job.sh || fail "cannot read $job/job.sh"
cat "$LOWER$job/conf" >/job/conf || fail "cannot read $job/conf"
out=
keep=
while IFS= read -r line; do
  case "$line" in
    out=*) out=${line#out=} ;;
    keep=*) keep=${line#keep=} ;;
  esac
done </job/conf

step "chroot"
if [ -n "$keep" ]; then # the job's folder under /tmp or /run: keep it
  mkdir -p /keep
  mount -o bind "$ROOT$keep" /keep || fail "cannot hold $keep (bind)"
fi
mount -t proc proc "$ROOT/proc" || fail "mount proc in the chroot"
mount -t sysfs sysfs "$ROOT/sys" || fail "mount sysfs in the chroot"
mount -t devtmpfs devtmpfs "$ROOT/dev" || fail "mount devtmpfs in the chroot"
mkdir -p "$ROOT/dev/pts" "$ROOT/dev/shm"
mount -t devpts devpts "$ROOT/dev/pts" || fail "mount devpts in the chroot"
mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm" || fail "mount /dev/shm"
mount -t tmpfs -o mode=1777 tmp "$ROOT/tmp" || fail "mount /tmp"
mount -t tmpfs -o mode=755 run "$ROOT/run" || fail "mount /run"
if [ -n "$keep" ]; then
  mkdir -p "$ROOT$keep" || fail "cannot create $keep in the VM"
  mount -o bind /keep "$ROOT$keep" || fail "cannot bring $keep back (bind)"
fi
mkdir -p "$ROOT/run/capdsm-vm"
cat /job/job.sh >"$ROOT/run/capdsm-vm/job.sh"
if [ -n "$out" ]; then
  mkdir -p "$ROOT$out" || fail "cannot create $out in the VM"
  err=$(mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "$ROOT$out" 2>&1) \
    || fail "mounting the --out folder over 9p failed: $err"
fi

step "rdma link add rxe0"
if ! err=$(chroot "$ROOT" rdma link add rxe0 type rxe netdev eth0 2>&1); then
  fail "'rdma link add rxe0 type rxe netdev eth0' failed: $err"
fi
i=0
while [ ! -e /sys/class/infiniband/rxe0 ]; do
  i=$((i + 1))
  [ "$i" -le 50 ] || fail "rxe0 did not appear in /sys/class/infiniband"
  sleep 0.1
done
if chroot "$ROOT" sh -c 'command -v ibv_devices' >/dev/null 2>&1; then
  devs=$(chroot "$ROOT" ibv_devices 2>&1) || fail "ibv_devices failed: $devs"
  case "$devs" in
    *rxe0*) ;;
    *) fail "ibv_devices does not list rxe0: $devs" ;;
  esac
fi

read -r up _ </proc/uptime
say "READY $up"
# Under TCG each write to the port reaches qemu, which appends it to a plain
# file on the host, before the write returns: nothing is left to drain.
chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/tmp TMPDIR=/tmp /bin/bash /run/capdsm-vm/job.sh </dev/null >"$jobout" 2>&1
rc=$?
# Whatever the job left running goes.
kill -9 -1 2>/dev/null
sleep 0.1
sync
read -r up _ </proc/uptime
say "END $up"
say "EXIT $rc"
halt
