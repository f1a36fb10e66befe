#!/usr/bin/env bash
# Configures and builds capdsm into BUILD_DIR (default: build/).
# Usage: scripts/build.sh [--sanitize] [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
san=OFF
if [ "${1:-}" = "--sanitize" ]; then san=ON; shift; fi
dir=${1:-build}
cmake -S . -B "$dir" -DCAPDSM_SANITIZE="$san" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" -j "$(nproc)"
