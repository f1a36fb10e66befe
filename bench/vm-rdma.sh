#!/usr/bin/env bash
# bench/vm-rdma.sh — the RDMA transport's benchmarks, inside tests/vm's VM
# (qemu under software emulation, soft-RoCE on rxe0), in one run:
#  - the transport's round trip (64 B request, 4 KiB reply) and streaming
#    throughput, beside the same over plain libibverbs (bench/verbs_raw,
#    same device, the same waiting: the requester spins, the responder
#    sleeps between requests): ratios transport / raw verbs;
#  - a remote read fault over RDMA beside one over ZeroMQ, each on a
#    3-node cluster of its own (bench_remote): ratio rdma / zmq.
# The VM's absolute times mean little (every instruction is emulated, and
# soft-RoCE is software too); the ratios are what to read. Each figure is
# the median of --runs runs (bench_remote and verbs_raw take medians inside
# too).
#
# usage: bench/vm-rdma.sh [--out FILE] [--build-dir DIR] [--runs N]
#   --out FILE   JSON lines (default bench/results/vm-rdma.jsonl)
#   --runs N     runs of each program (default 3)
# Needs what tests/vm/run.sh needs (qemu, the boot files it makes).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=$root/build
out=$here/results/vm-rdma.jsonl
runs=3
inside=0

usage() { sed -n '/^# usage:/,/^# Needs/p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a file}; shift ;;
    --build-dir) build=${2:?--build-dir needs a directory}; shift ;;
    --runs) runs=${2:?--runs needs a number}; shift ;;
    --inside) inside=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "vm-rdma.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case $runs in ''|*[!0-9]*|0) echo "vm-rdma.sh: --runs takes a positive number" >&2; exit 2 ;; esac
build=$(cd "$build" && pwd)

if [ $inside -eq 0 ]; then
  for b in bench/verbs_raw bench/bench_remote node/capdsmd tools/capdsm; do
    [ -x "$build/$b" ] || { echo "vm-rdma.sh: $build/$b not built" >&2; exit 1; }
  done
  mkdir -p "$(dirname "$out")"
  res=$(mktemp -d)
  trap 'rm -rf "$res"' EXIT
  "$root/tests/vm/run.sh" --timeout 1500 --out "$res" -- \
    "$here/vm-rdma.sh" --inside --build-dir "$build" --runs "$runs"
  cp "$res/vm-rdma.jsonl" "$out"
  echo "vm-rdma.sh: results in $out"
  exit 0
fi

# ---- inside the VM ----
: "${CAPDSM_VM_OUT:?vm-rdma.sh --inside runs in tests/vm/run.sh --out DIR}"
raw=$CAPDSM_VM_OUT/raw.jsonl
: >"$raw"
tool=$build/tools/capdsm
poll=200

cluster_bench() { # TRANSPORT CASES
  local dir
  dir=$(mktemp -d)
  printf '[node]\nlog_level = warn\npoll_us = %s\n' "$poll" >"$dir/extra.ini"
  "$tool" cluster up --nodes 3 --transport "$1" --dir "$dir/c" \
    --config-extra "$dir/extra.ini" >/dev/null
  "$build/bench/bench_remote" --dir "$dir/c" --mode polling --poll-us "$poll" \
    --cases "$2" --runs 1 | grep '^{' >>"$raw" || {
      "$tool" cluster down --dir "$dir/c" >/dev/null 2>&1 || true
      for l in "$dir"/c/node*/capdsmd.log; do
        echo "---- $l (last lines) ----" >&2; tail -n 15 "$l" >&2
      done
      echo "vm-rdma.sh: bench_remote over $1 failed" >&2; return 1; }
  "$tool" cluster down --dir "$dir/c" >/dev/null
  rm -rf "$dir"
}

for r in $(seq "$runs"); do
  echo "vm-rdma.sh: run $r of $runs" >&2
  # mixed: the requester spins, the responder sleeps between requests —
  # the daemons' policy, and how bench_remote's raw pair waits.
  "$build/bench/verbs_raw" --mode all --poll mixed | grep '^{' >>"$raw"
  cluster_bench rdma read,scan
  cluster_bench zmq read
done

python3 - "$raw" "$CAPDSM_VM_OUT/vm-rdma.jsonl" <<'PY'
import json, statistics, sys
src, dst = sys.argv[1], sys.argv[2]
vals = {}   # bench name -> [value per run]
alsos = {}  # (bench name, also name prefix) -> [value per run]
limits = {}
for line in open(src):
    d = json.loads(line)
    vals.setdefault(d["bench"], []).append(d["value"])
    if "limit" in d:
        limits.setdefault(d["bench"], []).append(d["limit"])
    for a in d.get("also", []):
        alsos.setdefault((d["bench"], a["name"]), []).append(a["value"])

def med(xs):
    return statistics.median(xs) if xs else None

def pick(name):
    v = med(vals.get(name, []))
    if v is None:
        sys.exit("vm-rdma.sh: no figure named %s (have: %s)"
                 % (name, ", ".join(sorted(vals))))
    return v

def also(bench, prefix):
    for (b, n), xs in alsos.items():
        if b == bench and n.startswith(prefix):
            return med(xs)
    sys.exit("vm-rdma.sh: %s has no '%s...' beside it" % (bench, prefix))

verbs_rt = next((k for k in vals if k.startswith("verbs_rt4k")), None)
verbs_st = next((k for k in vals if k.startswith("verbs_stream")), None)
if not verbs_rt or not verbs_st:
    sys.exit("vm-rdma.sh: verbs_raw printed no rt4k or stream figure")
rows = [
    # name, value, unit, limit, limit name, lower is better
    ("vm_rdma_transport_rt4k",
     also("remote_read_fault_home_rdma", "raw transport round trip"), "us",
     pick(verbs_rt), "plain libibverbs round trip, same device", True),
    ("vm_rdma_transport_stream",
     med(limits.get("remote_scan_mapped_rdma", [])), "MiB/s",
     pick(verbs_st), "plain libibverbs streaming, same device", False),
    ("vm_remote_read_fault_rdma_vs_zmq",
     pick("remote_read_fault_home_rdma"), "us",
     pick("remote_read_fault_home"), "the same fault over ZeroMQ + CURVE",
     True),
    ("vm_remote_read_fault_rdma",
     pick("remote_read_fault_home_rdma"), "us",
     med(limits["remote_read_fault_home_rdma"]),
     "rdma transport round trip + bare userfaultfd fault", True),
    ("vm_remote_scan_mapped_rdma",
     pick("remote_scan_mapped_rdma"), "MiB/s",
     med(limits["remote_scan_mapped_rdma"]),
     "rdma transport streaming", False),
]
with open(dst, "w") as f:
    for name, v, unit, lim, lname, lower in rows:
        if v is None or lim is None:
            sys.exit("vm-rdma.sh: %s is missing a figure" % name)
        ratio = v / lim
        d = {"bench": name, "value": round(v, 2), "unit": unit,
             "limit": round(lim, 2), "limit_name": lname,
             "ratio": round(ratio, 3),
             "better": "lower" if lower else "higher",
             "where": "qemu TCG VM, soft-RoCE rxe0", "runs": len(
                 vals.get(verbs_rt, []))}
        f.write(json.dumps(d) + "\n")
        print("%-36s %10.2f %-6s limit %10.2f  ratio %6.3f  (%s)"
              % (name, v, unit, lim, ratio, lname))
PY
