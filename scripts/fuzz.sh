#!/usr/bin/env bash
# scripts/fuzz.sh TARGET SECONDS [libFuzzer options...]
#
# Fuzz one reader with libFuzzer for SECONDS: TARGET is ini (INI files and
# --set up to a validated experiment), idx (the mnist plugin's IDX reader) or
# ckpt (the checkpoint reader). Builds build-fuzz/ with clang, coverage
# instrumentation everywhere and ASan+UBSan (clang's "loop not vectorized"
# remarks on OpenMP simd loops are not errors there), then runs the target on a copy
# of tests/fuzz/corpus/TARGET (new inputs land in build-fuzz/corpus/TARGET).
# A crash is written to build-fuzz/crashes/TARGET/; fix it and copy the file
# into tests/fuzz/corpus/TARGET/ so the fuzz.replay_TARGET ctest case keeps
# replaying it. Environment: DMNIST_FUZZ_BUILD (build folder), JOBS (-j).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-}
seconds=${2:-}
case $target in ini | idx | ckpt) ;; *) echo "usage: scripts/fuzz.sh ini|idx|ckpt SECONDS [libFuzzer options]" >&2; exit 2 ;; esac
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a number" >&2; exit 2; }
shift 2
build=${DMNIST_FUZZ_BUILD:-build-fuzz}
command -v clang >/dev/null || { echo "fuzz.sh: needs clang and libclang-rt-14-dev (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

# The sanitizer runtime as a shared library: plugins are linked with
# --no-undefined, and clang's static runtime would leave them its symbols
# to find. ASan is in the flags from the start so that the configure
# checks link too.
rt=$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.so)")
flags="-fsanitize=fuzzer-no-link,address -shared-libsan -Wno-pass-failed"
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDMNIST_WITH_CUDA=OFF -DDMNIST_SANITIZE=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath,$rt" -DCMAKE_MODULE_LINKER_FLAGS="-Wl,-rpath,$rt" \
    >"$build/fuzz-cmake.log" 2>&1 || { cat "$build/fuzz-cmake.log"; exit 1; }
cmake --build "$build" -j"${JOBS:-2}" --target "fuzz_$target" >"$build/fuzz-build.log" 2>&1 || { tail -50 "$build/fuzz-build.log"; exit 1; }

corpus=$build/corpus/$target
crashes=$build/crashes/$target
mkdir -p "$corpus" "$crashes"
cp -n tests/fuzz/corpus/"$target"/* "$corpus"/ 2>/dev/null || true
export DMNIST_PLUGIN_PATH=$PWD/$build/plugins
# libFuzzer's C++ runtime puts libstdc++ ahead of the shared ASan runtime;
# that order is harmless here.
export ASAN_OPTIONS=${ASAN_OPTIONS:-verify_asan_link_order=0:detect_leaks=1}
# leaks: report them (LeakSanitizer); -rss_limit_mb: a reader must never
# allocate what the file does not hold; -timeout: nor hang on an input.
"$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 \
    -artifact_prefix="$crashes/" -print_final_stats=1 "$@" "$corpus" tests/fuzz/corpus/"$target"
echo "fuzz.sh: $target ran ${seconds} s without a finding; corpus now $(ls "$corpus" | wc -l) inputs in $corpus"
