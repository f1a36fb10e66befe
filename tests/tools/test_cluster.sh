#!/bin/bash
# test_cluster.sh — `capdsm cluster up/status/down` on loopback and
# `capdsm keygen`: the configs make a real cluster (a key pair per node,
# secret files 0600 whatever the umask, distinct free ports, every node a
# peer of each, each public key the one of its node's secret), the daemons
# answer on their Unix sockets, down is harmless twice, and bad options
# are refused with one line before anything changes.
. "$(dirname "$0")/lib.sh"

N=3
D=$T/c
umask 000 # the key files must be 0600 anyway
up "$D" --nodes $N
umask 022

# ---- the configs ----
ports=""
keys=""
for k in $(seq 0 $((N - 1))); do
	conf=$D/node$k/capdsmd.conf
	key=$D/node$k/node.key
	[ -f "$conf" ] || fail "no $conf"
	expect_eq "node $k id" "$(ini "$conf" node id)" "$k"
	expect_eq "node $k nodes" "$(ini "$conf" cluster nodes)" "$N"
	expect_eq "node $k transport" "$(ini "$conf" cluster transport)" zmq
	expect_eq "node $k plaintext" "$(ini "$conf" cluster plaintext)" false
	expect_eq "node $k heartbeat_ms" \
		"$(ini "$conf" cluster heartbeat_ms)" 100
	expect_eq "node $k dead_after_ms" \
		"$(ini "$conf" cluster dead_after_ms)" 1000
	expect_eq "node $k secret_key_file" \
		"$(ini "$conf" cluster secret_key_file)" "$key"
	[ -f "$key" ] && [ ! -L "$key" ] || fail "$key: not a regular file"
	expect_eq "$key mode" "$(stat -c %a "$key")" 600
	expect_eq "$key owner" "$(stat -c %u "$key")" "$(id -u)"
	expect_eq "$key size" "$(stat -c %s "$key")" 41
	for j in $(seq 0 $((N - 1))); do
		addr=$(ini "$conf" "peer.$j" address) ||
			fail "node $k: no [peer.$j] address"
		pub=$(ini "$conf" "peer.$j" public_key) ||
			fail "node $k: no [peer.$j] public_key"
		case $addr in
		tcp://127.0.0.1:[1-9]*) ;;
		*) fail "node $k: [peer.$j] address $addr is not on loopback" ;;
		esac
		expect_eq "node $k: [peer.$j] key length" "${#pub}" 40
		# every node lists the same membership
		expect_eq "node $k: [peer.$j] address" "$addr" \
			"$(ini "$D/node0/capdsmd.conf" "peer.$j" address)"
		expect_eq "node $k: [peer.$j] key" "$pub" \
			"$(ini "$D/node0/capdsmd.conf" "peer.$j" public_key)"
	done
	! ini "$conf" "peer.$N" address >/dev/null ||
		fail "node $k: a [peer.$N] section for a node that is not there"
	derived=$("$PROBE" pub "$key") || fail "$key: not a secret key"
	expect_eq "node $k: public key of its secret" "$derived" \
		"$(ini "$conf" "peer.$k" public_key)"
	addr=$(ini "$conf" "peer.$k" address)
	ports="$ports ${addr##*:}"
	keys="$keys $derived"
done
expect_eq "distinct ports" "$(echo $ports | tr ' ' '\n' | sort -u | wc -l)" $N
expect_eq "distinct keys" "$(echo $keys | tr ' ' '\n' | sort -u | wc -l)" $N

# ---- status: every node up, answering, with its transport address ----
out=$("$CAPDSM" cluster status --dir "$D") || fail "status: $out"
expect_eq "status lines" "$(printf '%s\n' "$out" | wc -l)" $N
for k in $(seq 0 $((N - 1))); do
	addr=$(ini "$D/node$k/capdsmd.conf" "peer.$k" address)
	printf '%s\n' "$out" | grep -q "^node $k pid [0-9]* up socket $D/node$k/capdsm.sock address $addr " ||
		fail "status: no line for node $k up at $addr in: $out"
	"$CAPDSM" stats --dir "$D" --node $k >/dev/null ||
		fail "node $k does not answer on its socket"
done
pids=$(cat "$D"/node*/pid)

# ---- down, twice ----
"$CAPDSM" cluster down --dir "$D" || fail "cluster down"
for p in $pids; do
	! alive "$p" || fail "daemon $p survived cluster down"
done
"$CAPDSM" cluster down --dir "$D" 2>/dev/null || fail "second cluster down"
out=$("$CAPDSM" cluster status --dir "$D") && fail "status exits 0 when down"
printf '%s\n' "$out" | grep -q "^node 0 pid - down .* address tcp://127.0.0.1:" ||
	fail "status when down: $out"

# ---- up again: fresh keys; a link in place of a key file is replaced,
# never written through ----
old=$(ini "$D/node0/capdsmd.conf" peer.0 public_key)
echo victim >"$T/victim"
rm -f "$D/node1/node.key"
ln -s "$T/victim" "$D/node1/node.key"
up "$D" --nodes $N
expect_eq "victim" "$(cat "$T/victim")" victim
[ -f "$D/node1/node.key" ] && [ ! -L "$D/node1/node.key" ] ||
	fail "node.key still a link"
expect_eq "node 1 key mode" "$(stat -c %a "$D/node1/node.key")" 600
[ "$old" != "$(ini "$D/node0/capdsmd.conf" peer.0 public_key)" ] ||
	fail "up again kept the old key"
"$CAPDSM" cluster down --dir "$D" || fail "cluster down"

# ---- --plaintext and --base-port ----
P=$T/p
for base in 47301 48301 49301 50301 51301; do
	if "$CAPDSM" cluster up --dir "$P" --nodes 2 --plaintext \
		--base-port $base 2>"$T/err"; then
		CLUSTERS="$CLUSTERS $P"
		break
	fi
	grep -q "in use" "$T/err" || fail "up --base-port: $(cat "$T/err")"
	base=""
done
[ -n "$base" ] || fail "no free base port found"
expect_eq "plaintext" "$(ini "$P/node1/capdsmd.conf" cluster plaintext)" true
expect_eq "port of node 0" "$(ini "$P/node1/capdsmd.conf" peer.0 address)" \
	"tcp://127.0.0.1:$base"
expect_eq "port of node 1" "$(ini "$P/node0/capdsmd.conf" peer.1 address)" \
	"tcp://127.0.0.1:$((base + 1))"
"$CAPDSM" cluster status --dir "$P" | grep -q "address tcp://127.0.0.1:$((base + 1)) " ||
	fail "status does not show node 1's port"
"$CAPDSM" cluster down --dir "$P" || fail "cluster down"

# A base port in use is refused before anything starts.
"$PROBE" listen 127.0.0.1 $((base + 1)) &
listener=$!
for i in $(seq 100); do # until it listens
	ss -Hltn "sport = :$((base + 1))" 2>/dev/null | grep -q . && break
	sleep 0.05
done
refused "port $((base + 1)) on 127.0.0.1: Address already in use" \
	"$CAPDSM" cluster up --dir "$P" --nodes 2 --base-port $base
kill "$listener" 2>/dev/null
wait "$listener" 2>/dev/null
[ ! -e "$P/node0/pid" ] || fail "a refused up left a pid file"

# ---- --config-extra still wins over the cluster settings ----
printf '[cluster]\nheartbeat_ms = 50\ndead_after_ms = 500\n' >"$T/extra"
up "$D" --nodes 2 --config-extra "$T/extra"
expect_eq "heartbeat_ms" "$(ini "$D/node0/capdsmd.conf" cluster heartbeat_ms)" 50
[ ! -e "$D/node2/capdsmd.conf" ] || fail "node 2 was not retired"
[ ! -e "$D/node2/node.key" ] || fail "node 2's key was left"
"$CAPDSM" cluster status --dir "$D" >/dev/null || fail "status with extra"
"$CAPDSM" cluster down --dir "$D" || fail "cluster down"

# ---- a node that stalled past dead_after_ms is cut off for good
# (crash-stop), and status says so and exits 1 ----
S=$T/stall
printf '[cluster]\nheartbeat_ms = 50\ndead_after_ms = 300\n' >"$T/fast"
up "$S" --nodes 3 --config-extra "$T/fast"
"$CAPDSM" cluster status --dir "$S" >/dev/null || fail "status before the stall"
kill -STOP "$(cat "$S/node2/pid")"
sleep 0.8
kill -CONT "$(cat "$S/node2/pid")"
sleep 0.5
out=$("$CAPDSM" cluster status --dir "$S") && fail "status exited 0 after a cut: $out"
case $out in *"node 2 pid "*" up-but-cut-off "*) ;;
*) fail "status does not show node 2 cut off: $out" ;; esac
"$CAPDSM" cluster down --dir "$S" || fail "cluster down after the stall"

# ---- a node of the other transport is refused, and its log says why ----
M=$T/mixed
up "$M" --nodes 2
kill "$(cat "$M/node1/pid")"
for _ in $(seq 50); do kill -0 "$(cat "$M/node1/pid")" 2>/dev/null || break; sleep 0.1; done
sed -i 's/^transport = zmq$/transport = tcp/' "$M/node1/capdsmd.conf"
"$CAPDSMD" --config "$M/node1/capdsmd.conf" >"$T/mixed.log" 2>&1 &
odd=$!
for _ in $(seq 50); do grep -q "speaks ZeroMQ" "$T/mixed.log" && break; sleep 0.1; done
kill "$odd" 2>/dev/null
wait "$odd" 2>/dev/null
grep -q "must use the same cluster.transport" "$T/mixed.log" ||
	fail "a tcp node among zmq nodes did not say why it was refused: $(cat "$T/mixed.log")"
"$CAPDSM" cluster down --dir "$M" >/dev/null 2>&1

# ---- a daemon's refusal of its settings is relayed in one line ----
printf '[pools]\nremote_frames = 0\n' >"$T/tiny"
refused "pools.remote_frames = 0: a node of a cluster needs at least 16" \
	"$CAPDSM" cluster up --dir "$T/tiny-c" --nodes 2 --config-extra "$T/tiny"
"$CAPDSM" cluster down --dir "$T/tiny-c" >/dev/null 2>&1

# ---- a lone node is as before: no cluster section, no key ----
L=$T/l
up "$L" --nodes 1
! ini "$L/node0/capdsmd.conf" cluster nodes >/dev/null ||
	fail "a lone node got a [cluster] section"
[ ! -e "$L/node0/node.key" ] || fail "a lone node got a key"
"$CAPDSM" cluster status --dir "$L" | grep -q " up socket .* address - " ||
	fail "status of a lone node"
"$CAPDSM" cluster down --dir "$L" || fail "cluster down"

# ---- refusals ----
refused "need --nodes 2 or more" \
	"$CAPDSM" cluster up --dir "$T/r" --nodes 1 --plaintext
refused "zmq, tcp or rdma" \
	"$CAPDSM" cluster up --dir "$T/r" --nodes 2 --transport ib
if [ -z "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
	refused "no RDMA device" \
		"$CAPDSM" cluster up --dir "$T/r" --nodes 2 --transport rdma
fi
refused "must lie within 1 to 65535" \
	"$CAPDSM" cluster up --dir "$T/r" --nodes 3 --base-port 65534
[ ! -e "$T/r" ] || fail "a refused up created its directory"
"$CAPDSM" cluster up --dir "$T/r" --nodes 2 --transport zmq --netns-x \
	2>/dev/null && fail "an unknown option was accepted"

# ---- keygen ----
out=$("$CAPDSM" keygen) || fail "keygen"
expect_eq "keygen lines" "$(printf '%s\n' "$out" | wc -l)" 2
pub=$(printf '%s\n' "$out" | sed -n 's/^public_key = //p')
sec=$(printf '%s\n' "$out" | sed -n 's/^secret_key = //p')
expect_eq "keygen public key length" "${#pub}" 40
expect_eq "keygen secret key length" "${#sec}" 40
printf '%s\n' "$sec" >"$T/sec"
expect_eq "keygen pair" "$("$PROBE" pub "$T/sec")" "$pub"
[ "$out" != "$("$CAPDSM" keygen)" ] || fail "keygen repeats itself"
"$CAPDSM" keygen --dir "$T" 2>/dev/null
expect_eq "keygen --dir exit" $? 2

echo "$TEST: ok"
