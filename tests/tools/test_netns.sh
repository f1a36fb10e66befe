#!/bin/bash
# test_netns.sh — `capdsm cluster up --netns`: a network namespace per
# node with its own address on a bridge in a namespace of its own; the
# daemons run inside and still answer on their Unix sockets in DIR; the
# nodes reach each other; nothing appears in the root namespace; `down`
# removes every namespace, veth and bridge it made and nothing else, and is
# harmless twice; a failed `up` undoes its plumbing. Skips (77) only
# without root or without `ip netns`.
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || { echo "$TEST: skipped: needs root"; exit 77; }
ip netns list >/dev/null 2>&1 ||
	{ echo "$TEST: skipped: no 'ip netns'"; exit 77; }

N=3
D=$T/n
up "$D" --nodes $N --netns
[ -f "$D/netns" ] || fail "no record in $D/netns"
BR=$(awk '$1 == "netns" && $2 ~ /-br$/ { print $2 }' "$D/netns")
PFX=${BR%-br}
case $PFX in capdsm-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) ;;
*) fail "bridge namespace name '$BR'" ;; esac
expect_eq "namespaces recorded" "$(grep -c '^netns ' "$D/netns")" $((N + 1))
expect_eq "links recorded" "$(grep -c '^link ' "$D/netns")" $((N + 1))
ADDR0=$(ini "$D/node0/capdsmd.conf" peer.0 address)
NET=$(echo "$ADDR0" | sed -n 's|^tcp://\(10\.213\.[0-9]*\)\.1:7400$|\1|p')
[ -n "$NET" ] || fail "node 0's address $ADDR0"

ip netns list | grep -q "^$BR\b" || fail "no namespace $BR"
bridged=$(ip -n "$BR" -o link show master capdsm-br | awk -F': ' '{ print $2 }' |
	sed 's/@.*//' | sort | tr '\n' ' ')
expect_eq "bridge ports" "$bridged" "$(seq -f 'node%g' 0 $((N - 1)) | sort | tr '\n' ' ')"
for k in $(seq 0 $((N - 1))); do
	ns=$PFX-$k
	ip netns list | grep -q "^$ns\b" || fail "no namespace $ns"
	ip -n "$ns" -o -4 addr show dev capdsm0 |
		grep -q "inet $NET.$((k + 1))/24 " || fail "$ns: no $NET.$((k + 1))/24"
	ip -n "$ns" link show lo | grep -q "[<,]UP[,>]" || fail "$ns: lo is down"
	for j in $(seq 0 $((N - 1))); do
		expect_eq "node $k: [peer.$j] address" \
			"$(ini "$D/node$k/capdsmd.conf" "peer.$j" address)" \
			"tcp://$NET.$((j + 1)):$((7400 + j))"
	done
	pid=$(cat "$D/node$k/pid")
	expect_eq "node $k runs in $ns" "$(readlink "/proc/$pid/ns/net")" \
		"net:[$(stat -L -c %i "/var/run/netns/$ns")]"
	"$CAPDSM" stats --dir "$D" --node $k >/dev/null ||
		fail "node $k does not answer on its socket"
done
# nothing in the root namespace
! ip -o link show | grep -q "capdsm" || fail "a capdsm link in the root namespace"
! ip -o -4 addr show | grep -q "inet $NET\." || fail "$NET.x in the root namespace"

# node 0 reaches node 2 over the bridge
ip netns exec "$PFX-2" "$PROBE" listen "$NET.3" 7999 &
listener=$!
ip netns exec "$PFX-0" "$PROBE" connect "$NET.3" 7999 ||
	fail "node 0's namespace does not reach node 2's"
wait "$listener" || fail "the listener in node 2's namespace"

out=$("$CAPDSM" cluster status --dir "$D") || fail "status: $out"
for k in $(seq 0 $((N - 1))); do
	printf '%s\n' "$out" | grep -q "^node $k pid [0-9]* up socket $D/node$k/capdsm.sock address tcp://$NET.$((k + 1)):$((7400 + k)) netns $PFX-$k " ||
		fail "status: node $k in: $out"
done

# ---- down removes exactly what up made, and is harmless twice ----
"$CAPDSM" cluster down --dir "$D" || fail "cluster down"
! ip netns list | grep -q "^$PFX-" || fail "namespaces left: $(ip netns list)"
[ ! -e "$D/netns" ] || fail "the record is left"
"$CAPDSM" cluster down --dir "$D" 2>/dev/null || fail "second cluster down"

# ---- a failed up undoes its namespaces ----
out=$(CAPDSMD=/bin/false "$CAPDSM" cluster up --dir "$D" --nodes 2 --netns 2>&1) &&
	fail "up with a daemon that exits succeeded"
! ip netns list | grep -q "^$PFX-" || fail "a failed up left: $(ip netns list)"
[ ! -e "$D/netns" ] || fail "a failed up left its record"

# ---- a namespace of that name that is not ours is refused and kept ----
ip netns add "$PFX-1" || fail "ip netns add $PFX-1"
refused "network namespace $PFX-1 already exists" \
	"$CAPDSM" cluster up --dir "$D" --nodes 2 --netns
ip netns list | grep -q "^$PFX-1\b" || fail "a foreign namespace was removed"
n=$(ip netns list | grep -c "^$PFX-")
ip netns del "$PFX-1"
expect_eq "namespaces made by the refused up" "$n" 1
"$CAPDSM" cluster down --dir "$D" 2>/dev/null || fail "down after refusal"

# ---- namespaces of nodes that died: up again replaces them, down
# removes them ----
up "$D" --nodes 2 --netns
pids=$(cat "$D"/node*/pid)
kill -9 $pids
# SIGKILL is delivered, not yet acted on: wait until they are gone (or
# zombies), as a node that died is.
for _ in $(seq 100); do
	alive=0
	for p in $pids; do
		st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || true)
		case $st in ''|Z|X) ;; *) alive=1 ;; esac
	done
	[ $alive -eq 0 ] && break
	sleep 0.05
done
up "$D" --nodes 2 --netns
expect_eq "namespaces after up over dead nodes" \
	"$(ip netns list | grep -c "^$PFX-")" 3
kill -9 $(cat "$D"/node*/pid)
"$CAPDSM" cluster down --dir "$D" 2>/dev/null || fail "down of dead nodes"
! ip netns list | grep -q "^$PFX-" || fail "left: $(ip netns list)"

# ---- without root: one clear line ----
if command -v setpriv >/dev/null; then
	refused "--netns needs root" setpriv --reuid 65534 --regid 65534 \
		--clear-groups "$CAPDSM" cluster up --dir "$T/nr" --nodes 2 --netns
fi

echo "$TEST: ok"
