#!/usr/bin/env bash
# Build dmnist's .deb packages (docs/packaging.md) into a folder.
#
#   scripts/package.sh [-o OUTDIR] [--cpu-only] [-j N]
#
#   dmnist, dmnist-dev  from a CPU build (-DDMNIST_WITH_CUDA=OFF, prefix /usr)
#                       in BUILDROOT/pkg-cpu: what apt installs on a plain
#                       Debian 12 (dependencies by dpkg-shlibdeps)
#   dmnist-cuda         from a CUDA build (prefix /usr/lib/dmnist-cuda) in
#                       BUILDROOT/pkg-cuda, when nvcc is found (PATH or
#                       /usr/local/cuda/bin) and --cpu-only is not given
#
#   -o OUTDIR    where the .deb files go (default: build/deb); emptied of
#                earlier dmnist*.deb first
#   --cpu-only   only dmnist and dmnist-dev
#   -j N         build jobs (default 2; the build runs under nice)
#
# BUILDROOT is $DMNIST_PKG_BUILD_ROOT, default build/ of the checkout. The
# build trees are kept, so a second run only rebuilds what changed. Needs
# cmake, cpack and dpkg-shlibdeps (dpkg-dev; scripts/install-deps.sh --tests).
set -euo pipefail
prog=$(basename "$0")
root=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "$prog: $*" >&2; exit 1; }

out=$root/build/deb
cpu_only=0
jobs=2
while [ $# -gt 0 ]; do
  case $1 in
    -o) [ $# -ge 2 ] || die "-o needs a folder"; out=$2; shift 2 ;;
    -o*) out=${1#-o}; shift ;;
    --cpu-only) cpu_only=1; shift ;;
    -j) [ $# -ge 2 ] || die "-j needs a number"; jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
case $jobs in ''|*[!0-9]*) die "-j: want a number, got '$jobs'" ;; esac
for tool in cmake cpack dpkg-shlibdeps; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh --tests installs dpkg-dev)"
done
buildroot=${DMNIST_PKG_BUILD_ROOT:-$root/build}
mkdir -p "$out" "$buildroot"
out=$(cd "$out" && pwd)
# Folders in the package get the mode of the staging folders: no group or
# other write, or the installed plugin folder would be refused.
umask 022

# build NAME CMAKE-ARGS...: configure, build and cpack BUILDROOT/pkg-NAME.
build() {
  local name=$1; shift
  local dir=$buildroot/pkg-$name
  echo "$prog: $name build in $dir"
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$dir.configure.log" 2>&1 ||
    { tail -30 "$dir.configure.log" >&2; die "$name: cmake configure failed (log: $dir.configure.log)"; }
  nice -n 10 cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1 ||
    { tail -30 "$dir.build.log" >&2; die "$name: build failed (log: $dir.build.log)"; }
  rm -f "$dir"/packages/*.deb
  (cd "$dir" && cpack -G DEB) >"$dir.cpack.log" 2>&1 ||
    { tail -30 "$dir.cpack.log" >&2; die "$name: cpack failed (log: $dir.cpack.log)"; }
  cp "$dir"/packages/*.deb "$out"/
}

rm -f "$out"/dmnist*.deb
build cpu -DDMNIST_WITH_CUDA=OFF -DCMAKE_INSTALL_PREFIX=/usr
if [ "$cpu_only" = 0 ]; then
  if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    build cuda -DDMNIST_WITH_CUDA=ON -DCMAKE_INSTALL_PREFIX=/usr/lib/dmnist-cuda
    ls "$out"/dmnist-cuda_*.deb >/dev/null 2>&1 ||
      echo "$prog: no dmnist-cuda package: the CUDA build found no complete toolkit (see $buildroot/pkg-cuda.configure.log)" >&2
  else
    echo "$prog: no nvcc: dmnist-cuda not built"
  fi
fi

echo "$prog: packages in $out:"
for deb in "$out"/dmnist*.deb; do
  printf '  %-36s %8s bytes, installed %5s KiB\n    Depends: %s\n' "$(basename "$deb")" \
    "$(stat -c %s "$deb")" "$(dpkg-deb -f "$deb" Installed-Size)" "$(dpkg-deb -f "$deb" Depends)"
done
