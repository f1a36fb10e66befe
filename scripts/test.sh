#!/usr/bin/env bash
# The test command: installs what is missing, builds twice (plain, and with
# AddressSanitizer + UndefinedBehaviorSanitizer) and runs every test in both.
# Usage: scripts/test.sh [--quick]   (--quick: the plain build only)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

# Tests labelled rdma need a verbs device: the host never has one, so they
# run only inside tests/vm's VM (soft-RoCE), which the tests labelled vm
# boot — in the plain build (under software emulation the sanitized
# binaries would take too long).
run() {
  local dir=$1 exclude=$2; shift 2
  bash scripts/build.sh "$@" "$dir"
  (cd "$dir" && ctest --output-on-failure --timeout 300 -j 2 -LE "$exclude")
}

echo "== plain build =="
run build rdma
echo "== RDMA tests in a VM (soft-RoCE; ctest -L vm) =="
(cd build && CAPDSM_VM_TESTS=1 ctest --output-on-failure -L vm)
if [ "${1:-}" != "--quick" ]; then
  echo "== AddressSanitizer + UndefinedBehaviorSanitizer build =="
  # Sanitized daemons run several times slower: the test clusters' failure
  # detector gets twice its default time (CAPDSM_TEST_SLOW, tests/lib), so
  # a loaded machine does not declare a live node dead.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  CAPDSM_TEST_SLOW=2 \
    run build-asan 'rdma|vm' --sanitize
fi
