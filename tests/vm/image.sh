#!/usr/bin/env bash
# Builds, and caches, the boot files of the test VM (tests/vm/run.sh): the
# kernel of Debian's linux-image-amd64 and an initramfs of busybox-static,
# the kernel modules the VM needs (soft-RoCE, 9p, virtio, overlayfs) and the
# guest's init (tests/vm/init.sh).
#
# Usage: tests/vm/image.sh [CACHE_DIR]
#   CACHE_DIR defaults to $CAPDSM_VM_CACHE, else build/vm-cache in the repo.
#   CAPDSM_VM_KERNEL_PKG names the kernel package (default: the package that
#   `apt-cache depends linux-image-amd64` names).
# Writes CACHE_DIR/vmlinuz (and vmlinux, the same kernel uncompressed, which
# boots faster) and CACHE_DIR/initrd.cpio, and rebuilds them only when an
# input changed (kernel package version, busybox, this script, init.sh).
# Takes about 10 s (and a 70 MB download) when it builds. The kernel package is downloaded with `apt-get download` and
# unpacked with `dpkg -x` into the cache; it is never installed on the host.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${1:-${CAPDSM_VM_CACHE:-$repo/build/vm-cache}}

die() { echo "vm-image: error: $*" >&2; exit 1; }
note() { echo "vm-image: $*" >&2; }

# The modules the guest loads (each with its dependencies, in order).
# virtio_console carries the job's output (a virtio-serial port); rdma_ucm
# gives librdmacm its /dev/infiniband/rdma_cm; crc32_generic is not a listed
# dependency of rdma_rxe, but without it `rdma link add` fails with "No such
# file or directory".
MODULES=(virtio_pci virtio_net virtio-rng virtio_console 9pnet_virtio 9p overlay
         crc32_generic rdma_rxe rdma_ucm)

for tool in apt-cache apt-get dpkg dpkg-deb depmod modprobe cpio flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install: apt-get install dpkg apt kmod cpio util-linux coreutils)"
done
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox not found (install: apt-get install busybox-static)"
# (grep reads the whole list: grep -q would stop early, and busybox's
# SIGPIPE would fail the pipeline under pipefail.)
if ! "$busybox" --list 2>/dev/null | grep -x insmod >/dev/null; then
  die "$busybox has no insmod applet (install: apt-get install busybox-static)"
fi
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; the initramfs needs busybox-static"
fi
[ -f "$here/init.sh" ] || die "$here/init.sh missing"

mkdir -p "$cache" || die "cannot create cache folder $cache"
cache=$(cd "$cache" && pwd)

# One builder at a time (several ctest tests may start VMs together).
exec 9>"$cache/.lock"
flock 9

# Fast path: nothing that could change the image is newer than the last
# build (apt-cache alone takes a second or two).
pin=${CAPDSM_VM_KERNEL_PKG:-}
if [ -f "$cache/stamp" ] && [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.cpio" ] \
   && [ "$(cat "$cache/pin" 2>/dev/null)" = "pin=$pin" ] \
   && [ -z "$(find "${BASH_SOURCE[0]}" "$here/init.sh" "$busybox" /var/lib/apt/lists \
                   -maxdepth 1 -newer "$cache/stamp" -print -quit 2>/dev/null)" ]; then
  exit 0
fi

# Which kernel package, and which version of it.
kernel_pkg() {
  local deps
  deps=$(apt-cache depends linux-image-amd64 2>/dev/null) || return 0
  printf '%s\n' "$deps" | sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1
}
pkg=${CAPDSM_VM_KERNEL_PKG:-}
if [ -z "$pkg" ]; then
  pkg=$(kernel_pkg)
  if [ -z "$pkg" ] && [ ! -s "$cache/stamp" ] && [ "$(id -u)" -eq 0 ]; then
    # Fresh machine whose package lists were never fetched.
    note "apt does not know linux-image-amd64; running apt-get update"
    apt-get update -qq >&2 || die "'apt-get update' failed (no access to Debian's archive?)"
    pkg=$(kernel_pkg)
  fi
fi
ver=
if [ -n "$pkg" ]; then
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1) || ver=
fi

busybox_sum=$(sha256sum "$busybox" | cut -d' ' -f1)
self_sum=$(cat "${BASH_SOURCE[0]}" "$here/init.sh" | sha256sum | cut -d' ' -f1)

if [ -z "$pkg" ] || [ -z "$ver" ]; then
  # No apt metadata. A complete cache is still usable; anything else is not.
  if [ -f "$cache/stamp" ] && [ -f "$cache/vmlinuz" ] && [ -f "$cache/initrd.cpio" ]; then
    old=$(cat "$cache/stamp")
    case "$old" in
      *"busybox=$busybox_sum self=$self_sum")
        note "apt does not know linux-image-amd64 here; using the cached image (${old%% *})"
        exit 0 ;;
    esac
  fi
  if [ -n "$pin" ]; then
    die "apt knows no package $pin (CAPDSM_VM_KERNEL_PKG); run 'apt-get update' with access to Debian's archive"
  fi
  die "cannot find the kernel package: 'apt-cache depends linux-image-amd64' names none \
(run 'apt-get update' with access to Debian's archive, or set CAPDSM_VM_KERNEL_PKG)"
fi

stamp="kernel=$pkg=$ver busybox=$busybox_sum self=$self_sum"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ] \
   && [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.cpio" ]; then
  echo "pin=$pin" >"$cache/pin"
  touch "$cache/stamp"
  exit 0
fi

note "building the VM image in $cache ($pkg $ver)"
rm -f "$cache/stamp"

# 1. The kernel package (kept, so that a change of init.sh alone does not
#    download it again).
debdir=$cache/deb
mkdir -p "$debdir"
deb=$(find "$debdir" -maxdepth 1 -name "${pkg}_*.deb" -print | head -n1)
if [ -n "$deb" ] && [ "$(dpkg-deb -f "$deb" Version 2>/dev/null)" != "$ver" ]; then
  rm -f "$deb"
  deb=
fi
if [ -z "$deb" ]; then
  rm -f "$debdir"/*.deb
  note "apt-get download $pkg ($ver)"
  if ! (cd "$debdir" && apt-get download -q "$pkg=$ver" >"$debdir/download.log" 2>&1); then
    cat "$debdir/download.log" >&2
    die "'apt-get download $pkg=$ver' failed (no access to Debian's archive?)"
  fi
  deb=$(find "$debdir" -maxdepth 1 -name "${pkg}_*.deb" -print | head -n1)
  [ -n "$deb" ] || die "'apt-get download $pkg' produced no .deb in $debdir"
fi

# 2. Unpack it (never installed) and index its modules.
root=$cache/root
rm -rf "$root"
dpkg -x "$deb" "$root" || die "dpkg -x $deb failed"
kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)
[ -n "$kver" ] || die "no lib/modules/VERSION in $deb"
vmlinuz=$root/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "no boot/vmlinuz-$kver in $deb"
# The package ships no modules.dep (its postinst runs depmod).
depmod -b "$root" "$kver" || die "depmod -b $root $kver failed"

# Writes the ELF image inside a bzImage to OUT: tries every compressed
# stream the kernel may hold, keeps the first that unpacks to an ELF file.
extract_vmlinux() {
  local img=$1 dst=$2 fmt magic off tool
  for fmt in xz:'\xfd7zXZ\x00' zstd:'\x28\xb5\x2f\xfd' gzip:'\x1f\x8b\x08' lz4:'\x02\x21\x4c\x18'; do
    tool=${fmt%%:*} magic=${fmt#*:}
    command -v "$tool" >/dev/null 2>&1 || continue
    while IFS=: read -r off _; do
      tail -c +$((off + 1)) "$img" | "$tool" -dc >"$dst" 2>/dev/null || true
      if [ "$(head -c 4 "$dst" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        return 0
      fi
    done < <(LC_ALL=C grep -obUaP "$magic" "$img" | head -n 4)
  done
  rm -f "$dst"
  return 1
}

# 3. The initramfs tree.
tree=$cache/initrd.d
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,dev,proc,sys,tmp,mnt,lib/modules}
cp "$busybox" "$tree/bin/busybox"
# Only the applets init.sh needs are linked; the rest stay reachable as
# `busybox APPLET`.
for a in sh mount umount mkdir insmod ip chroot poweroff sleep cat stty \
         ls echo grep sed mknod ln rm sync kill dmesg tail; do
  ln -s busybox "$tree/bin/$a"
done
cp "$here/init.sh" "$tree/init"
chmod 755 "$tree/init"

# Drops a module's appended signature: checking the RSA signatures under
# software emulation takes about half the time of loading the modules (this
# kernel does not enforce them; it notes the kernel as tainted and loads).
strip_signature() {
  local f=$1 magic='~Module signature appended~' size siglen
  [ "$(tail -c 28 "$f" | head -c 27)" = "$magic" ] || return 0
  siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print $1*16777216 + $2*65536 + $3*256 + $4}')
  size=$(stat -c %s "$f")
  truncate -s $((size - 28 - 12 - siglen)) "$f"
}

# Modules in dependency order, each once, decompressed (busybox insmod reads
# plain .ko files only).
declare -A seen=()
order=()
for m in "${MODULES[@]}"; do
  if ! deps=$(modprobe -d "$root" -S "$kver" --show-depends "$m" 2>&1); then
    die "module $m: 'modprobe --show-depends' failed: $deps"
  fi
  while read -r kind path _; do
    [ "$kind" = insmod ] || continue     # "builtin NAME" needs nothing
    [ -z "${seen[$path]:-}" ] || continue
    seen[$path]=1
    order+=("$path")
  done <<<"$deps"
done
[ ${#order[@]} -gt 0 ] || die "no modules found for: ${MODULES[*]}"
: >"$tree/lib/modules/order"
for path in "${order[@]}"; do
  base=$(basename "$path")
  case "$base" in
    *.ko)     name=${base%.ko};     cp "$path" "$tree/lib/modules/$name.ko" ;;
    *.ko.xz)  name=${base%.ko.xz};  command -v xz >/dev/null || die "xz not found (apt-get install xz-utils) for $base"
              xz -dc "$path" >"$tree/lib/modules/$name.ko" ;;
    *.ko.zst) name=${base%.ko.zst}; command -v zstd >/dev/null || die "zstd not found (apt-get install zstd) for $base"
              zstd -qdc "$path" >"$tree/lib/modules/$name.ko" ;;
    *.ko.gz)  name=${base%.ko.gz};  gzip -dc "$path" >"$tree/lib/modules/$name.ko" ;;
    *) die "unknown module file type: $path" ;;
  esac
  strip_signature "$tree/lib/modules/$name.ko"
  echo "$name" >>"$tree/lib/modules/order"
done

# 4. The kernel. qemu boots an uncompressed vmlinux with a PVH entry note
#    straight into 64-bit code, which saves the seconds that decompressing
#    bzImage takes under TCG; without PVH (or when extraction fails) run.sh
#    boots the bzImage.
rm -f "$cache/vmlinux.new"
if grep -qx 'CONFIG_PVH=y' "$root/boot/config-$kver" 2>/dev/null; then
  extract_vmlinux "$vmlinuz" "$cache/vmlinux.new" \
    || note "could not extract vmlinux from $vmlinuz; booting the bzImage (slower)"
fi

# 5. Pack. Uncompressed: unpacking is cheaper than decompressing under TCG.
(cd "$tree" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
  >"$cache/initrd.cpio.new" || die "cpio failed"
cp "$vmlinuz" "$cache/vmlinuz.new"
mv "$cache/initrd.cpio.new" "$cache/initrd.cpio"
mv "$cache/vmlinuz.new" "$cache/vmlinuz"
if [ -f "$cache/vmlinux.new" ]; then
  mv "$cache/vmlinux.new" "$cache/vmlinux"
else
  rm -f "$cache/vmlinux"
fi
echo "$kver" >"$cache/kernel-version"
cp "$tree/lib/modules/order" "$cache/modules"
rm -rf "$root" "$tree"
echo "pin=$pin" >"$cache/pin"
echo "$stamp" >"$cache/stamp"
note "done: kernel $kver; modules: $(tr '\n' ' ' <"$cache/modules")"
