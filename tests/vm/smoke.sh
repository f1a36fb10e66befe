#!/usr/bin/env bash
# The VM harness's own test (ctest -L vm): boots the VM of tests/vm/run.sh
# and checks, inside it, that rxe0 is listed and active and that RC traffic
# flows between two processes (ibv_rc_pingpong); that the command's output
# and a file written to --out come back; then that a command's exit status 3
# comes back as run.sh's exit status. Two boots, about half a minute.
# Usage: tests/vm/smoke.sh [--full]   (--full: also check the time limit)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

# ---- inside the VM ------------------------------------------------------
if [ "${1:-}" = "--in-vm" ]; then
  [ "${CAPDSM_VM:-}" = 1 ] || fail "--in-vm outside the VM"
  [ -n "${CAPDSM_VM_OUT:-}" ] || fail "CAPDSM_VM_OUT not set"
  tmp=$(mktemp -d)

  echo "== ibv_devices"
  ibv_devices | tee "$tmp/devices"
  grep -qw rxe0 "$tmp/devices" || fail "ibv_devices does not list rxe0"

  echo "== ibv_devinfo -d rxe0"
  ibv_devinfo -d rxe0 | tee "$tmp/devinfo"
  grep -Eq 'state:[[:space:]]+PORT_ACTIVE' "$tmp/devinfo" || fail "rxe0's port is not active"
  grep -Eq 'transport:[[:space:]]+InfiniBand' "$tmp/devinfo" || fail "rxe0 is not an RDMA device"

  echo "== ibv_rc_pingpong -d rxe0 -g 1 (server and client)"
  iters=200
  timeout 60 ibv_rc_pingpong -d rxe0 -g 1 -n "$iters" >"$tmp/server" 2>&1 &
  server=$!
  ok=0
  for _ in $(seq 1 50); do
    if timeout 60 ibv_rc_pingpong -d rxe0 -g 1 -n "$iters" 127.0.0.1 >"$tmp/client" 2>&1; then
      ok=1
      break
    fi
    # Not listening yet: the client gives up at once; try again.
    grep -q "Couldn't connect" "$tmp/client" || break
    sleep 0.2
  done
  src=0
  wait "$server" || src=$?
  echo "-- server"; cat "$tmp/server"
  echo "-- client"; cat "$tmp/client"
  [ "$ok" = 1 ] || fail "ibv_rc_pingpong client failed"
  [ "$src" = 0 ] || fail "ibv_rc_pingpong server failed (exit $src)"
  grep -q "$iters iters in" "$tmp/client" || fail "the client did not report $iters iterations"
  grep -q "$iters iters in" "$tmp/server" || fail "the server did not report $iters iterations"

  line=$(grep 'iters in' "$tmp/client" | head -n1)
  printf '{"test": "vm.smoke", "pingpong": "%s"}\n' "$line" >"$CAPDSM_VM_OUT/smoke.json"
  echo "smoke-in-vm: all checks passed"
  exit 0
fi

# ---- on the host --------------------------------------------------------
full=0
[ "${1:-}" = "--full" ] && full=1
cd "$repo"
work=$(mktemp -d "${TMPDIR:-/tmp}/capdsm-vm-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out"
ms() { echo $(( $(date +%s%N) / 1000000 )); }

echo "smoke: 1. rxe0 and RC ping-pong inside the VM"
t0=$(ms)
rc=0
bash "$here/run.sh" --timeout 240 --out "$work/out" -- bash "$here/smoke.sh" --in-vm \
  | tee "$work/log" || rc=$?
t1=$(ms)
[ "$rc" = 0 ] || fail "run.sh exited $rc for the checks inside the VM"
grep -q '^smoke-in-vm: all checks passed$' "$work/log" \
  || fail "the command's output did not come back through run.sh"
[ -s "$work/out/smoke.json" ] || fail "the file written to --out did not reach the host"
echo "smoke: --out file: $(cat "$work/out/smoke.json")"

echo "smoke: 2. a command that exits 3 makes run.sh exit 3"
rc=0
bash "$here/run.sh" --timeout 120 -- sh -c 'echo "exiting with 3"; exit 3' >"$work/log3" || rc=$?
t2=$(ms)
cat "$work/log3"
[ "$rc" = 3 ] || fail "run.sh exited $rc, not 3"
grep -qx 'exiting with 3' "$work/log3" || fail "the output of the second command did not come back"

if [ "$full" = 1 ]; then
  echo "smoke: 3. the time limit stops the VM and run.sh exits 124"
  rc=0
  bash "$here/run.sh" --timeout 30 -- sleep 600 || rc=$?
  [ "$rc" = 124 ] || fail "run.sh exited $rc after its time limit, not 124"
fi

echo "smoke: ok (VM runs: $(( (t1 - t0) / 1000 )) s with ping-pong, $(( (t2 - t1) / 1000 )) s exit-status check)"
