# lib.sh — shared by the shell tests of the capdsm tool (sourced).
#
# Needs CAPDSM (the tool), CAPDSMD (the daemon) and PROBE (probe.c) in the
# environment, as ctest sets them. Each test works in its own temporary
# folder, $T, and stops every cluster it started there on exit.

set -u
: "${CAPDSM:?set CAPDSM to the capdsm tool}"
: "${CAPDSMD:?set CAPDSMD to capdsmd}"
: "${PROBE:?set PROBE to the probe helper}"
export CAPDSMD

TEST=$(basename "$0" .sh)
T=$(mktemp -d /tmp/capdsm-tools.XXXXXX) || exit 1
T=$(realpath "$T")
CLUSTERS=""

fail() {
	echo "$TEST: FAIL: $*" >&2
	exit 1
}

cleanup() {
	for d in $CLUSTERS; do
		"$CAPDSM" cluster down --dir "$d" >/dev/null 2>&1
	done
	rm -rf "$T"
}
trap cleanup EXIT

# up DIR ARGS...: cluster up that must succeed and print nothing.
up() {
	local dir=$1 out
	shift
	CLUSTERS="$CLUSTERS $dir"
	out=$("$CAPDSM" cluster up --dir "$dir" "$@" 2>&1) ||
		fail "cluster up --dir $dir $*: $out"
	[ -z "$out" ] || fail "cluster up printed: $out"
}

# refused WHAT-TO-FIND CMD...: CMD must exit 1 with one line on stderr
# holding WHAT-TO-FIND.
refused() {
	local want=$1 out rc
	shift
	out=$("$@" 2>&1)
	rc=$?
	[ "$rc" = 1 ] || fail "$* exited $rc, not 1: $out"
	[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "$*: not one line: $out"
	case $out in
	"capdsm: "*"$want"*) ;;
	*) fail "$*: expected '$want' in: $out" ;;
	esac
}

# ini FILE SECTION KEY: the last value of KEY in [SECTION], as inih reads
# it (later settings win); fails when there is none.
ini() {
	awk -v s="[$2]" -v k="$3" '
		/^[ \t]*\[/ { cur = $0; gsub(/[ \t]/, "", cur); next }
		cur == s {
			i = index($0, "=")
			if (!i) next
			key = substr($0, 1, i - 1); gsub(/[ \t]/, "", key)
			if (key != k) next
			v = substr($0, i + 1); sub(/^[ \t]+/, "", v)
			sub(/[ \t\r]+$/, "", v); val = v; found = 1
		}
		END { if (!found) exit 1; print val }' "$1"
}

# alive PID: whether the process runs (a zombie left for init to reap
# does not).
alive() {
	local st
	st=$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
	[ "$st" != Z ] && [ "$st" != X ]
}

# expect_eq WHAT GOT WANT
expect_eq() {
	[ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}
