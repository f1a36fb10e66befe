#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts a local cluster and
# runs a real workload on it, showing capabilities and space banks on the way.
# Usage: scripts/demo.sh [--nodes N] [--workers P] [--size N] [--iters K]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=3 workers=4 size=512 iters=100
usage() { echo "demo: $*" >&2; echo "usage: scripts/demo.sh [--nodes N] [--workers P] [--size N] [--iters K]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --nodes|--workers|--size|--iters)
      [ $# -ge 2 ] || usage "$1 needs a value"
      case $2 in ''|*[!0-9]*) usage "$1 $2: not a number" ;; esac
      case $1 in
        --nodes) nodes=$2 ;; --workers) workers=$2 ;;
        --size) size=$2 ;; --iters) iters=$2 ;;
      esac
      shift 2 ;;
    *) usage "unknown option $1" ;;
  esac
done
# The same bounds as capdsm-jacobi and capdsm cluster up, checked before
# anything is installed or started.
[ "$nodes" -ge 1 ] && [ "$nodes" -le 64 ] || usage "--nodes $nodes: 1 to 64"
[ "$workers" -ge 1 ] && [ "$workers" -le 64 ] || usage "--workers $workers: 1 to 64"
[ "$size" -ge 3 ] && [ "$size" -le 4096 ] || usage "--size $size: 3 to 4096"
[ "$iters" -ge 1 ] || usage "--iters $iters: at least 1"

bash scripts/install-deps.sh
bash scripts/build.sh build
bin=$PWD/build
capdsm() { "$bin/tools/capdsm" "$@"; }

export CAPDSM_DIR
CAPDSM_DIR=$(mktemp -d /tmp/capdsm-demo.XXXXXX)
cleanup() { capdsm cluster down >/dev/null 2>&1 || true; rm -rf "$CAPDSM_DIR"; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
expect_fail() {  # runs a command that must fail, and shows its one-line reason
  if out=$("$@" 2>&1); then echo "demo: expected a refusal from: $*" >&2; exit 1; fi
  echo "refused as it should be: $out"
}

step "start a local cluster of $nodes node(s) in $CAPDSM_DIR"
capdsm cluster up --nodes "$nodes"
capdsm cluster status

step "create a data object and write to it"
ref=$(capdsm object create --size 1M)
echo "sturdy reference: $ref"
printf 'hello from capdsm\n' | capdsm write "$ref" --offset 0
capdsm read "$ref" --offset 0 --length 18
capdsm cap show "$ref"

if [ "$nodes" -gt 1 ]; then
  step "the same object from other nodes: written on node $((nodes-1)), read on node 1"
  printf 'written on the last node\n' | capdsm write "$ref" --offset 8192 --node $((nodes-1))
  capdsm read "$ref" --offset 8192 --length 25 --node 1
  capdsm read "$ref" --offset 8192 --length 25 --node 0
fi

step "map it into two programs: a store in one is seen by the other"
capdsm map "$ref" --at 4096 --wait-change 11 --timeout 20 > "$CAPDSM_DIR/seen" &
watcher=$!
sleep 0.5
capdsm map "$ref" --rights read,write --at 4096 --put "stored here"
wait "$watcher"
echo "the other program saw: $(cat "$CAPDSM_DIR/seen")"
[ "$(cat "$CAPDSM_DIR/seen")" = "stored here" ]

step "restrict it to read-only: reads work, writes and widening are refused"
ro=$(capdsm cap restrict "$ref" --rights read,map,grant)
capdsm cap show "$ro"
capdsm read "$ro" --offset 0 --length 18
expect_fail sh -c "echo x | '$bin/tools/capdsm' write '$ro' --offset 0"
expect_fail capdsm map "$ro" --rights read,write --put x
expect_fail capdsm cap restrict "$ro" --rights read,write,map,grant
capdsm map "$ro" --at 4096 --print 11; echo "   <- read through a read-only mapping"

step "revoke the read-only reference: every use of it fails"
capdsm cap revoke "$ro"
expect_fail capdsm read "$ro" --offset 0 --length 4
expect_fail capdsm cap show "$ro"
capdsm read "$ref" --offset 0 --length 18   # the original is untouched

step "a space bank with a quota of 2 objects"
bank=$(capdsm bank create --limit-objects 2)
capdsm object create --size 4K --bank "$bank" >/dev/null
capdsm object create --size 4K --bank "$bank" >/dev/null
expect_fail capdsm object create --size 4K --bank "$bank"
capdsm bank show "$bank"
capdsm bank destroy "$bank"

step "an object ends only through a capability with every right"
tmp=$(capdsm object create --size 64K)
expect_fail capdsm object destroy "$(capdsm cap restrict "$tmp" --rights read,write,lock,map)"
capdsm object destroy "$tmp"
expect_fail capdsm read "$tmp" --length 1

step "the workload: a Jacobi solve on a grid mapped into $workers processes on $nodes node(s)"
socks=()
for ((k = 0; k < nodes; k++)); do socks+=(--socket "$CAPDSM_DIR/node$k/capdsm.sock"); done
"$bin/demo/capdsm-jacobi" "${socks[@]}" \
  --workers "$workers" --size "$size" --iters "$iters"

step "the node's counters"
capdsm stats

step "stop the cluster"
capdsm cluster down
echo "demo: all steps passed"
