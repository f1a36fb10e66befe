#!/usr/bin/env bash
# bench/run.sh — runs every capdsm benchmark against daemons of its own.
#
# Starts two capdsmd in a temporary directory — one blocking (poll_us = 0),
# one busy-polling (poll_us = 200) — both pinned to the "server" CPU, runs
# each benchmark program (each measures its figure and its limit in the same
# run, interleaved), stops the daemons, writes every result as one JSON
# object per line to --out and prints a table. Then starts 4-node clusters
# of its own (`capdsm cluster up`, encrypted, pinned the same way), runs
# bench_remote on each (with OpenMPI's MPI_Get beside it when bench/mpi_get
# was built), and stops it: busy-polling over the tcp and the zmq
# transports, and without --quick once more blocking over tcp.
#
# Placement: a wake-up on these machines costs ~15 us when the woken thread
# runs on the waker's core and ~100+ us when a halted vCPU must be woken, and
# an unpinned run flips between the two at random, differently for the
# daemon and for the limit's process. So every side is pinned: "samecore"
# results run client, daemon (or raw peer / handler thread) on one CPU — the
# software cost of the path, the number an optimisation of the daemon moves;
# "splitcore" results put the client on another CPU — the cost with a
# cross-core wake-up, and the only sensible placement for busy-polling.
#
# usage: bench/run.sh [--quick] [--out FILE] [--build-dir DIR] [--no-build]
#                     [--strict]
#   --quick      fewer and shorter runs, for CI (under a minute)
#   --out FILE   JSON lines (default bench/results/latest.jsonl)
#   --build-dir  the CMake build directory (default ./build of the repo)
#   --no-build   use the binaries already built there
#   --strict     exit 1 if any target is missed (default: only if a
#                benchmark fails to run)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=$root/build
out=$here/results/latest.jsonl
quick=0
do_build=1
strict=0

usage() { sed -n '/^# usage:/,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --out) out=${2:?--out needs a file}; shift ;;
    --out=*) out=${1#--out=} ;;
    --build-dir) build=${2:?--build-dir needs a directory}; shift ;;
    --build-dir=*) build=${1#--build-dir=} ;;
    --no-build) do_build=0 ;;
    --strict) strict=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

benches=(bench_mapped bench_fault bench_rw bench_lock bench_remote)
if [ $do_build -eq 1 ]; then
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$root" -B "$build" >/dev/null
  fi
  cmake --build "$build" -j2 --target capdsmd capdsm "${benches[@]}" >/dev/null
  # mpi_get exists only where CMake found MPI.
  cmake --build "$build" -j2 --target mpi_get >/dev/null 2>&1 || true
fi
daemon=$build/node/capdsmd
tool=$build/tools/capdsm
[ -x "$tool" ] || { echo "run.sh: $tool not built" >&2; exit 1; }
for b in "${benches[@]}"; do
  [ -x "$build/bench/$b" ] || { echo "run.sh: $build/bench/$b not built" >&2; exit 1; }
done
[ -x "$daemon" ] || { echo "run.sh: $daemon not built" >&2; exit 1; }

# CPUs: the daemons and the limits' servers on one, split-core clients on
# another. With one CPU (or no taskset) the split-core runs are skipped.
ncpu=$(nproc 2>/dev/null || echo 1)
server_cpu=$((ncpu > 1 ? 1 : 0))
client_cpu=0
pin=()
if command -v taskset >/dev/null 2>&1; then
  pin=(taskset -c "$server_cpu")
fi
split=1
if [ "$ncpu" -lt 2 ] || [ ${#pin[@]} -eq 0 ]; then
  split=0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/capdsm-bench.XXXXXX")
daemon_pids=()
cluster_dir=
cleanup() {
  local pid
  # Our own cluster only: `cluster down` signals the pids its directory
  # names, after checking they are that directory's daemons.
  if [ -n "$cluster_dir" ]; then
    "$tool" cluster down --dir "$cluster_dir" >/dev/null 2>&1 || true
  fi
  for pid in "${daemon_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${daemon_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_daemon NAME POLL_US: a daemon listening on $tmp/NAME.sock.
start_daemon() {
  local name=$1 poll_us=$2 i
  cat >"$tmp/$name.ini" <<EOF
[node]
id = 0
socket = $tmp/$name.sock
dir = $tmp
log_level = warn
poll_us = $poll_us
[pools]
frames = 262144
EOF
  "${pin[@]}" "$daemon" --config "$tmp/$name.ini" 2>"$tmp/$name.log" &
  daemon_pids+=($!)
  for i in $(seq 100); do
    [ -S "$tmp/$name.sock" ] && return 0
    if ! kill -0 "${daemon_pids[-1]}" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "run.sh: daemon '$name' did not start:" >&2
  cat "$tmp/$name.log" >&2
  exit 1
}

start_daemon block 0
start_daemon poll 200

q=()
# Split-core runs pay a cross-core wake-up (60-500 us here) per round trip:
# smaller batches keep the full suite well inside its few minutes.
split_fault=(--pages 2048)
split_lock=(--iters 1000)
if [ $quick -eq 1 ]; then
  q=(--quick)
  split_fault=()
  split_lock=()
fi
same=(--client-cpu "$server_cpu" --server-cpu "$server_cpu")
splitc=(--client-cpu "$client_cpu" --server-cpu "$server_cpu")
bsock=$tmp/block.sock
psock=$tmp/poll.sock

results=$tmp/results.jsonl
: >"$results"
failed=0

# run LABEL PROGRAM ARGS...: runs one benchmark, shows its readable lines,
# keeps its JSON lines. Bounded in time: a hung benchmark is a failure.
run() {
  local label=$1 prog=$2 rc=0
  shift 2
  echo "== $label"
  timeout 600 "$build/bench/$prog" "$@" >"$tmp/one.out" 2>"$tmp/one.err" || rc=$?
  grep -v '^{' "$tmp/one.out" || true
  grep '^{' "$tmp/one.out" >>"$results" || true
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    echo "!! $prog failed (exit $rc):" >&2
    cat "$tmp/one.err" >&2
  elif [ -s "$tmp/one.err" ]; then
    cat "$tmp/one.err" >&2
  fi
  echo
}

t_start=$(date +%s)
load_before=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)
run "1. mapped memory vs plain memory" bench_mapped --socket "$bsock" \
  --client-cpu "$server_cpu" "${q[@]}"
run "2a. first-touch fault, blocking, same core" bench_fault \
  --socket "$bsock" --mode blocking "${same[@]}" "${q[@]}"
if [ $split -eq 1 ]; then
  run "2b. first-touch fault, blocking, split cores" bench_fault \
    --socket "$bsock" --mode blocking "${splitc[@]}" "${split_fault[@]}" \
    "${q[@]}"
  run "2c. first-touch fault, busy-polling, split cores" bench_fault \
    --socket "$psock" --mode polling "${splitc[@]}" "${split_fault[@]}" \
    "${q[@]}"
else
  echo "== 2b, 2c skipped: need two CPUs and taskset"; echo
fi
run "3. explicit read/write vs raw AF_UNIX socket" bench_rw --socket "$bsock" \
  "${same[@]}" "${q[@]}"
run "4a. lock/unlock vs raw AF_UNIX round trip, same core" bench_lock \
  --socket "$bsock" "${same[@]}" "${q[@]}"
if [ $split -eq 1 ]; then
  run "4b. lock/unlock vs raw AF_UNIX round trip, split cores" bench_lock \
    --socket "$bsock" "${splitc[@]}" "${split_lock[@]}" "${q[@]}"
fi
# 5. Remote operations on a cluster of 4 daemons of our own, CURVE on (as
# deployed), all pinned to the server CPU like the daemons above, the client
# on the other CPU: busy-polling (poll_us = 200), and without --quick also
# blocking (poll_us = 0, the daemon's default).
mpi=()
if [ -x "$build/bench/mpi_get" ] && command -v mpirun >/dev/null 2>&1; then
  mpi=(--mpi-get "$build/bench/mpi_get" --mpirun "$(command -v mpirun)")
fi
remote_cpus=(--client-cpu "$client_cpu" --server-cpu "$server_cpu")
[ $split -eq 1 ] || remote_cpus=(--client-cpu 0 --server-cpu 0)
# Both transports busy-polling (tcp first: the faster one), and without
# --quick the tcp cluster blocking as well.
remote_modes=("a polling 200 tcp" "b polling 200 zmq")
[ $quick -eq 1 ] || remote_modes+=("c blocking 0 tcp")
for m in "${remote_modes[@]}"; do
  read -r tag mode poll_us transport <<<"$m"
  cluster_dir=$tmp/cluster-$mode-$transport
  printf '[node]\nlog_level = warn\npoll_us = %s\n' "$poll_us" \
    >"$tmp/cluster-$mode.ini"
  if ! "${pin[@]}" "$tool" cluster up --nodes 4 --dir "$cluster_dir" \
      --transport "$transport" \
      --config-extra "$tmp/cluster-$mode.ini" >"$tmp/cluster.out" 2>&1; then
    failed=$((failed + 1))
    echo "!! cluster up ($mode, $transport) failed:" >&2
    cat "$tmp/cluster.out" >&2
    "$tool" cluster down --dir "$cluster_dir" >/dev/null 2>&1 || true
    continue
  fi
  run "5$tag. remote operations on a 4-node cluster, $transport, $mode" bench_remote \
    --dir "$cluster_dir" --mode "$mode" --poll-us "$poll_us" \
    "${remote_cpus[@]}" "${mpi[@]}" "${q[@]}"
  "$tool" cluster down --dir "$cluster_dir" >/dev/null 2>&1 || true
done
cluster_dir=

t_end=$(date +%s)
load_after=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)

# Every line also says which commit and suite it came from, and how busy
# the machine was (1-minute load average before and after: other work on
# these two cores is the first suspect for a wide pair_ratio spread).
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=false
if [ -n "$(git -C "$root" status --porcelain -- bench node dsm proto caps coherence 2>/dev/null)" ]; then
  dirty=true
fi
when=$(date -u +%Y-%m-%dT%H:%M:%SZ)
qjson=$([ $quick -eq 1 ] && echo true || echo false)
mkdir -p "$(dirname "$out")"
sed "s/}\$/,\"commit\":\"$commit\",\"dirty\":$dirty,\"quick\":$qjson,\"time\":\"$when\",\"kernel\":\"$(uname -r)\",\"cpus\":$ncpu,\"load_before\":$load_before,\"load_after\":$load_after}/" \
  "$results" >"$out"

# The table, from the JSON lines (flat keys, written by bench.c).
awk '
function get(key,   m, v) {
  if (!match($0, "\"" key "\":(\"[^\"]*\"|[^,}]*)")) return ""
  v = substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
  gsub(/"/, "", v)
  return v
}
BEGIN {
  printf "%-46s %-8s %12s %12s %-6s %7s %8s  %s\n", "benchmark", "mode",
         "value", "limit", "unit", "ratio", "target", "result"
}
{
  met = get("met") == "true" ? "met" : "MISSED"
  if (met == "MISSED") missed++
  printf "%-46s %-8s %12.2f %12.2f %-6s %7.3f %3s %4.2f  %s\n", get("bench"),
         get("mode") == "" ? "-" : get("mode"), get("value"), get("limit"),
         get("unit"), get("ratio"), get("target_cmp"), get("target"), met
}
END { if (missed) printf "\n%d target(s) missed\n", missed }
' "$out"
echo
echo "results: $out ($((t_end - t_start)) s, load average $load_before -> $load_after)"

if [ $failed -gt 0 ]; then
  echo "run.sh: $failed benchmark(s) failed" >&2
  exit 1
fi
if [ $strict -eq 1 ] && grep -q '"met":false' "$out"; then
  exit 1
fi
exit 0
