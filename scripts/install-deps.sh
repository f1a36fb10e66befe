#!/usr/bin/env bash
# Installs every Debian package that capdsm's build, tests and benchmarks
# need. Idempotent: packages already present are left alone.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git clang libclang-rt-14-dev
  protobuf-c-compiler libprotobuf-c-dev
  libsodium-dev libinih-dev liburing-dev libcmocka-dev
  libzmq3-dev libibverbs-dev librdmacm-dev ibverbs-providers rdma-core
  iproute2 procps util-linux python3
  openmpi-bin libopenmpi-dev
  qemu-system-x86 busybox-static cpio kmod ibverbs-utils xz-utils
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "install-deps: need root to install: ${missing[*]}" >&2
    echo "install-deps: run as root, or: sudo $0" >&2
    exit 1
  fi
else
  SUDO=
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
