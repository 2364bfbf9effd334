#!/usr/bin/env bash
# The .deb packages on a fresh Debian 12 (issue 18, part 5; docs/packaging.md):
# build dmnist and dmnist-dev (scripts/package.sh --cpu-only), install them
# with apt into a clean `debootstrap --variant=minbase bookworm` chroot, then
# in it, as root: dmnist-run --list-plugins (the installed plugins, found
# relative to /usr/bin/dmnist-run, pass the trust checks) and a short
# training on synthetic data (configs/cnn-synthetic.ini).
#
# Skips (exit 77) without debootstrap, without chroot (not root, or no
# CAP_SYS_CHROOT / mount), or when the Debian archive is unreachable.
#
# Environment:
#   DMNIST_BUILD_DIR      the build folder (set by ctest); the chroot tarball
#                         is cached in DMNIST_BUILD_DIR/package-test/cache
#   DMNIST_DEBIAN_MIRROR  default http://deb.debian.org/debian
#   DMNIST_PACKAGE_DEBS   a folder that already holds dmnist_*.deb and
#                         dmnist-dev_*.deb: install those, build nothing
#   DMNIST_PACKAGE_REFRESH=1  make the chroot anew (replace the cached tarball)
set -euo pipefail
prog=package/install.sh
here=$(cd "$(dirname "$0")" && pwd)
src=${DMNIST_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
build=${DMNIST_BUILD_DIR:-$src/build}
mirror=${DMNIST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$build/package-test
cache=$work/cache/bookworm-minbase.tar.gz
skip() { echo "SKIP: $prog: $*"; exit 77; }
fail() { echo "FAIL: $prog: $*" >&2; exit 1; }
step() { printf '%s: [%4ds] %s\n' "$prog" "$SECONDS" "$*"; }

# ---- can this machine do it at all? --------------------------------------
{ command -v debootstrap || [ -x /usr/sbin/debootstrap ]; } >/dev/null || skip "debootstrap not installed (scripts/install-deps.sh --tests)"
[ "$(id -u)" = 0 ] || skip "not root: chroot and mount need root"
chroot / /bin/true 2>/dev/null || skip "chroot not permitted here (no CAP_SYS_CHROOT)"
host=${mirror#*://}; host=${host%%/*}; port=80
case $mirror in https://*) port=443 ;; esac
case $host in *:*) port=${host##*:}; host=${host%%:*} ;; esac
timeout 10 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null ||
  skip "the Debian archive $mirror is unreachable (DMNIST_DEBIAN_MIRROR)"

mkdir -p "$work/cache"
root=$(mktemp -d "$work/root.XXXXXX")
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  # only after every mount is gone: never follow a bind mount while deleting
  if ! grep -q " $root/" /proc/mounts; then rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT

# ---- the packages ---------------------------------------------------------
if [ -n "${DMNIST_PACKAGE_DEBS:-}" ]; then
  debs=$DMNIST_PACKAGE_DEBS
else
  debs=$work/debs
  step "building the packages (scripts/package.sh --cpu-only)"
  DMNIST_PKG_BUILD_ROOT=$work timeout 1200 "$src/scripts/package.sh" --cpu-only -o "$debs" ||
    fail "scripts/package.sh failed"
fi
ls "$debs"/dmnist_*.deb "$debs"/dmnist-dev_*.deb >/dev/null 2>&1 || fail "no dmnist_*.deb and dmnist-dev_*.deb in $debs"

# ---- a clean bookworm, from the cached tarball ----------------------------
if [ "${DMNIST_PACKAGE_REFRESH:-0}" = 1 ]; then rm -f "$cache"; fi
if [ ! -s "$cache" ]; then
  step "debootstrap --variant=minbase bookworm from $mirror (cached as $cache)"
  PATH=$PATH:/usr/sbin timeout 1200 debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    fail "debootstrap failed (log: $work/debootstrap.log)"
  }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
  tar -C "$root" --numeric-owner -czf "$cache.tmp" . && mv "$cache.tmp" "$cache"
else
  step "unpacking the cached chroot $cache"
  tar -C "$root" --numeric-owner -xzf "$cache"
fi

# The chroot's own apt, pointed at the mirror; /proc for /proc/self/exe
# (dmnist-run finds its plugins relative to itself) and for the ranks.
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$root/proc" 2>/dev/null || skip "mounting /proc in the chroot is not permitted"
mounted+=("$root/proc")
if [ ! -e "$root/dev/null" ] || [ ! -c "$root/dev/null" ]; then
  mount --bind /dev "$root/dev" || skip "bind-mounting /dev in the chroot is not permitted"
  mounted+=("$root/dev")
fi
mkdir -p "$root/tmp/dmnist-debs" "$root/tmp/dmnist-run"
cp "$debs"/dmnist_*.deb "$debs"/dmnist-dev_*.deb "$root/tmp/dmnist-debs/"
cp "$src/configs/cnn-synthetic.ini" "$root/tmp/dmnist-run/"

in_chroot() { timeout "$1" chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/bash -euo pipefail -c "$2"; }

# ---- install with apt: it resolves the dependencies -----------------------
step "apt-get update"
in_chroot 300 'apt-get update -q' >"$work/apt-update.log" 2>&1 || {
  tail -20 "$work/apt-update.log" >&2; fail "apt-get update in the chroot failed"; }
step "apt-get install -y ./dmnist_*.deb ./dmnist-dev_*.deb"
in_chroot 900 'cd /tmp/dmnist-debs && apt-get install -y -q --no-install-recommends ./dmnist_*.deb ./dmnist-dev_*.deb' \
  >"$work/apt-install.log" 2>&1 || { tail -30 "$work/apt-install.log" >&2; fail "apt-get install of the packages failed"; }
grep -E '^(Need to get|After this operation)' "$work/apt-install.log" | sed "s|^|$prog:   |" || true

# ---- the installed files ---------------------------------------------------
step "installed files: owner root, no group/other write"
in_chroot 60 '
  dpkg -L dmnist dmnist-dev | while read -r f; do
    [ -e "$f" ] || continue
    [ "$(stat -c %u "$f")" = 0 ] || { echo "not root'"'"'s: $f"; exit 1; }
    if [ -n "$(find "$f" -maxdepth 0 -perm /022 ! -type l)" ]; then echo "group/other-writable: $f"; exit 1; fi
  done
  test -x /usr/bin/dmnist-run
  ls /usr/lib/*/dmnist/plugins/dm_conv2d.so
  test -f /usr/include/dmnist/plugin.h
  ls /usr/lib/*/cmake/dmnist/dmnistConfig.cmake /usr/lib/*/pkgconfig/dmnist.pc' || fail "the installed files are not as expected"

step "dmnist-run --list-plugins"
in_chroot 120 'cd /tmp && dmnist-run --list-plugins' >"$work/list-plugins.txt" 2>&1 || {
  cat "$work/list-plugins.txt" >&2; fail "dmnist-run --list-plugins failed"; }
for t in conv2d dense maxpool2d dropout flatten relu softmax_cross_entropy adam sgd synthetic mnist local; do
  grep -qw "$t" "$work/list-plugins.txt" || { cat "$work/list-plugins.txt" >&2; fail "--list-plugins does not list '$t'"; }
done
grep -q '/usr/lib/[^ ]*/dmnist/plugins' "$work/list-plugins.txt" || {
  cat "$work/list-plugins.txt" >&2; fail "--list-plugins does not show the installed plugin folder"; }
if grep -qiE 'refus|not trusted|writable' "$work/list-plugins.txt"; then
  cat "$work/list-plugins.txt" >&2; fail "a plugin was refused by the trust checks"
fi

step "a short training: cnn-synthetic.ini, 8 batches of 32"
in_chroot 300 'cd /tmp/dmnist-run && dmnist-run --set train.log_every=2 cnn-synthetic.ini 8 32' \
  >"$work/train.txt" 2>&1 || { cat "$work/train.txt" >&2; fail "training in the chroot failed"; }
tail -5 "$work/train.txt" | sed "s|^|$prog:   |"

step "dmnist-plugin-check on an installed plugin"
in_chroot 300 'dmnist-plugin-check /usr/lib/*/dmnist/plugins/dm_relu.so' >"$work/plugin-check.txt" 2>&1 || {
  cat "$work/plugin-check.txt" >&2; fail "dmnist-plugin-check on the installed dm_relu.so failed"; }

step "PASS (logs in $work)"
