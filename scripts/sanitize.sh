#!/usr/bin/env bash
# scripts/sanitize.sh [BUILD_DIR] [ctest options...]
#
# Build dmnist with AddressSanitizer and UndefinedBehaviorSanitizer
# (-DDMNIST_SANITIZE=ON) into BUILD_DIR (default build-asan) and run the test
# suite there. Tests labelled `long` (two full MNIST epochs) and `package`
# (the .deb packages installed in a chroot: a property of the install, not
# of the code's memory use) and `lab` (jobs across network-namespace hosts:
# the same code paths as tests/distributed's elastic and fault cases, which
# run here, behind slow shaped links) are left to the main build: under ASan they take
# several times as long and check nothing
# the shorter end-to-end tests do not. The valgrind test skips itself here
# (valgrind cannot run ASan binaries); the main build runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-asan}
[ $# -gt 0 ] && shift
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDMNIST_SANITIZE=ON -DDMNIST_WITH_CUDA=OFF
cmake --build "$build" -j"$jobs"
# Any sanitizer report fails the test that caused it (UBSan aborts: the
# build uses -fno-sanitize-recover); ASan's exit code is 1.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:check_initialization_order=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build" --output-on-failure -j"$jobs" -LE "long|package|lab" "$@"
