#!/usr/bin/env bash
# GPU check: on a machine with one NVIDIA GPU and no internet, build (or
# unpack a build carried from a CUDA-toolkit machine), run every CUDA test,
# train one epoch of configs/cnn-gpu.ini (its batch, 64 and 512), run the PyTorch
# reference (scripts/bench/torch_gpu.py: eager and torch.compile, batch 64
# and 512) and print one table: tests passed, test accuracy, images/s,
# seconds per epoch. Every part has a time limit; a failing part is reported
# in the table and the script goes on. Logs go to $OUT (or /tmp/dmnist-gpu-check-out).
#
#   scripts/gpu-check.sh --prepare   on the development machine (CUDA toolkit,
#                                    no GPU needed): build the committed HEAD at
#                                    $DMNIST_GPU_BUILD and pack build, runtime
#                                    libraries and MNIST into
#                                    build-gpu-carry/bundle.tar.gz
#   scripts/gpu-check.sh             on the GPU machine, from the repository
#                                    root; uses build-gpu-carry/ when present,
#                                    else configures and builds there
#   scripts/gpu-check.sh --tests-only [CASE...]
#                                    the same, the CUDA tests alone (all, or
#                                    the test_cuda cases named: nan "layer dense")
#
# CUDA libraries: where the GPU machine has cuDNN, cuBLAS and NCCL only
# inside Python's site-packages (nvidia/*/lib, as PyTorch wheels install
# them), they are found through `import nvidia` and put on LD_LIBRARY_PATH
# (and given to CMake when building there).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${DMNIST_GPU_BUILD:-/tmp/dmnist-gpu-build} # the same path on both machines: CTest files hold it
CARRY=$REPO/build-gpu-carry
OUT=${OUT:-/tmp/dmnist-gpu-check-out}
mkdir -p "$OUT"
T0=$(date +%s)
# Logs are written to LOGS; at exit $OUT gets three files (the device tool
# brings back at most 8): gpu-check.log, table.txt and logs.tar.gz.
LOGS=$(mktemp -d /tmp/dmnist-gpu-check.XXXXXX)
pack() {
    cp "$LOGS"/gpu-check.log "$LOGS"/table.txt "$OUT/" 2>/dev/null || true
    tar -C "$LOGS" -czf "$OUT/logs.tar.gz" . 2>/dev/null || true
}
trap pack EXIT

say() { printf '%s\n' "$*" | tee -a "$LOGS/gpu-check.log"; }
elapsed() { echo $(($(date +%s) - T0)); }

# ---- --prepare: build here, pack what the GPU machine needs --------------------------
if [[ ${1:-} == --prepare ]]; then
    command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
    # Build the committed HEAD, not the working tree (others' half-written
    # changes must not end up in the GPU run).
    SRC=/tmp/dmnist-gpu-src
    rm -rf "$SRC" "$BUILD" && mkdir -p "$SRC" && git -C "$REPO" archive HEAD | tar -x -C "$SRC"
    say "prepare: configuring $BUILD from HEAD $(git -C "$REPO" rev-parse --short HEAD) (CUDA arch ${CUDA_ARCH:-90})"
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
        >"$LOGS/prepare-configure.log" 2>&1 || { tail -20 "$LOGS/prepare-configure.log"; exit 1; }
    grep -q "building CUDA implementations" "$LOGS/prepare-configure.log" ||
        { echo "prepare: CMake did not find the CUDA toolkit (see $LOGS/prepare-configure.log)"; exit 1; }
    targets=(dmnist-run test_cuda dm_conv2d dm_dense dm_relu dm_maxpool2d dm_dropout dm_flatten
        dm_softmax_cross_entropy dm_sgd dm_adam dm_nccl dm_local dm_mnist dm_synthetic dm_gloo dm_mpi dm_test_poison)
    say "prepare: building ${targets[*]}"
    cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}" >"$LOGS/prepare-build.log" 2>&1 ||
        { tail -30 "$LOGS/prepare-build.log"; exit 1; }
    stage=$(mktemp -d)
    mkdir -p "$stage/build/plugins" "$stage/build/tests/cuda" "$stage/build/tests/robustness/plugins" "$stage/lib" \
        "$stage/mnist"
    cp "$BUILD/dmnist-run" "$stage/build/"
    cp "$BUILD/tests/cuda/test_cuda" "$stage/build/tests/cuda/"
    for t in "${targets[@]}"; do
        [[ $t == dm_* && $t != dm_test_* ]] && cp "$BUILD/plugins/$t.so" "$stage/build/plugins/"
    done
    # the test dataset of test_cuda nan, where the test looks for it
    cp "$BUILD/tests/robustness/plugins/dm_test_poison.so" "$stage/build/tests/robustness/plugins/"
    # Non-CUDA shared libraries the GPU machine may lack (CUDA ones come from it);
    # Gloo's for the staging test. Open MPI is not carried (its components and
    # mpirun come with it): dm_mpi runs only where the GPU machine has its own.
    for bin in "$stage"/build/dmnist-run "$stage"/build/plugins/*.so; do
        ldd "$bin" | awk '/=> \//{print $1, $3}'
    done | sort -u | while read -r name path; do
        case $name in
        libinih* | libopenblas* | libgfortran* | libquadmath* | libgomp* | libgloo* | libhiredis* | libibverbs* | \
            libnl-3* | libnl-route-3*) cp -L "$path" "$stage/lib/$name" ;;
        esac
    done
    data=${DMNIST_MNIST_DIR:-$REPO/data/mnist}
    [[ -f $data/train-images-idx3-ubyte.gz ]] || data=$REPO/../shared/data/mnist
    cp "$data"/*-ubyte.gz "$stage/mnist/"
    {
        echo "built $(date -u +%FT%TZ) on $(hostname) from $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
        nvcc --version | tail -2
    } >"$stage/MANIFEST"
    mkdir -p "$CARRY"
    tar -C "$stage" -czf "$CARRY/bundle.tar.gz" .
    rm -rf "$stage"
    say "prepare: wrote $CARRY/bundle.tar.gz ($(du -h "$CARRY/bundle.tar.gz" | cut -f1)); carry build-gpu-carry"
    exit 0
fi

# ---- 1. versions and paths ----------------------------------------------------------
say "== dmnist gpu-check $(date -u +%FT%TZ) in $REPO (logs: $OUT)"
{
    echo "-- host: $(uname -srm); $(nproc) CPUs"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
    (command -v nvcc >/dev/null && nvcc --version | tail -1) || ls /usr/local/cuda/bin/nvcc 2>&1 || true
    cmake --version 2>&1 | head -1 || true
    echo "python3: $(command -v python3) $(python3 --version 2>&1)"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1 || true
} 2>&1 | tee -a "$LOGS/gpu-check.log"

# NVIDIA's libraries inside site-packages (nvidia/<name>/lib, nvidia/cu13/lib).
NV_LIB_DIRS=$(python3 - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = []
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "*", "lib"))):
        if glob.glob(os.path.join(d, "*.so*")):
            dirs.append(d)
print(":".join(dirs))
EOF
)
find_lib() { # first file named $1 (a glob) in NV_LIB_DIRS, then the toolkit
    local d
    for d in ${NV_LIB_DIRS//:/ } /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
        compgen -G "$d/$1" >/dev/null && { compgen -G "$d/$1" | head -1; return 0; }
    done
    return 1
}
say "-- NVIDIA library folders from site-packages: ${NV_LIB_DIRS:-none}"
for l in 'libcudart.so.1*' 'libcublas.so.1*' 'libcudnn.so.9*' 'libnccl.so.2*'; do
    say "   $l -> $(find_lib "$l" || echo 'not found')"
done
export LD_LIBRARY_PATH=${NV_LIB_DIRS:+$NV_LIB_DIRS:}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# ---- 2. build, or unpack the carried build -------------------------------------------
BUILD_NOTE=""
DATA=$REPO/data/mnist
if [[ -f $CARRY/bundle.tar.gz ]]; then
    say "-- using the carried build ($CARRY/bundle.tar.gz)"
    rm -rf "$BUILD" /tmp/dmnist-gpu-bundle && mkdir -p /tmp/dmnist-gpu-bundle
    if tar -C /tmp/dmnist-gpu-bundle -xzf "$CARRY/bundle.tar.gz"; then
        mkdir -p "$(dirname "$BUILD")" && mv /tmp/dmnist-gpu-bundle/build "$BUILD"
        cat /tmp/dmnist-gpu-bundle/MANIFEST | tee -a "$LOGS/gpu-check.log"
        export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/tmp/dmnist-gpu-bundle/lib # last: the machine's own first
        DATA=/tmp/dmnist-gpu-bundle/mnist
        BUILD_NOTE="carried build"
    else
        BUILD_NOTE="FAILED to unpack the carried build"
    fi
else
    say "-- no carried build: configuring and building in $BUILD"
    CUDNN_LIB=$(find_lib 'libcudnn.so*' || true)
    NCCL_LIB=$(find_lib 'libnccl.so*' || true)
    extra=()
    [[ -n $CUDNN_LIB ]] && extra+=(-DDMNIST_CUDNN_LIB="$CUDNN_LIB" -DDMNIST_CUDNN_INCLUDE="$(dirname "$(dirname "$CUDNN_LIB")")/include")
    [[ -n $NCCL_LIB ]] && extra+=(-DDMNIST_NCCL_LIB="$NCCL_LIB" -DDMNIST_NCCL_INCLUDE="$(dirname "$(dirname "$NCCL_LIB")")/include")
    command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
    if timeout 120 cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        "${extra[@]}" >"$LOGS/configure.log" 2>&1 &&
        timeout 240 cmake --build "$BUILD" -j"$(nproc)" --target dmnist-run test_cuda dm_conv2d dm_dense \
            dm_relu dm_maxpool2d dm_dropout dm_flatten dm_softmax_cross_entropy dm_sgd dm_adam dm_local \
            dm_mnist dm_synthetic dm_test_poison >"$LOGS/build.log" 2>&1; then
        timeout 120 cmake --build "$BUILD" -j"$(nproc)" --target dm_nccl >>"$LOGS/build.log" 2>&1 || true
        for t in dm_gloo dm_mpi; do # the staging test's backends, where this machine has them
            timeout 120 cmake --build "$BUILD" -j"$(nproc)" --target $t >>"$LOGS/build.log" 2>&1 || true
        done
        BUILD_NOTE="built here"
    else
        BUILD_NOTE="FAILED to build (see configure.log, build.log)"
        tail -15 "$LOGS/configure.log" "$LOGS/build.log" 2>/dev/null | tee -a "$LOGS/gpu-check.log" || true
    fi
fi
say "-- build: $BUILD_NOTE ($(elapsed) s)"
missing=$(ldd "$BUILD"/dmnist-run "$BUILD"/plugins/*.so "$BUILD"/tests/cuda/test_cuda 2>/dev/null |
    awk '/^\//{f=$1} /not found/{print f": "$1}' | sort -u || true)
say "-- shared libraries not found: ${missing:-none}"
# dmnist-run loads every plugin of its build tree: keep out mpi and gloo
# where their libraries are missing here (a plugin that cannot load stops
# every run); with them, test_cuda staging runs two ranks through each.
for p in "$BUILD"/plugins/dm_mpi.so "$BUILD"/plugins/dm_gloo.so; do
    [[ -f $p ]] || continue
    if ldd "$p" 2>/dev/null | grep -q "not found"; then
        say "-- $(basename "$p") left out: $(ldd "$p" | awk '/not found/{print $1}' | tr '\n' ' ')not found"
        rm -f "$p"
    fi
done
export DMNIST_PLUGIN_PATH=$BUILD/plugins DMNIST_BUILD_DIR=$BUILD DMNIST_SOURCE_DIR=$REPO
[[ -f $DATA/train-images-idx3-ubyte.gz || -f $DATA/train-images-idx3-ubyte ]] || DATA=$REPO/../shared/data/mnist
say "-- MNIST from $DATA"
# For commands after this script on the same machine (scripts/seeds, sweep):
# source it to get this run's libraries, plugins and data.
cat >"$BUILD/gpu-env.sh" <<EOF
export LD_LIBRARY_PATH='$LD_LIBRARY_PATH' DMNIST_PLUGIN_PATH='$BUILD/plugins' DMNIST_BUILD_DIR='$BUILD'
export DMNIST_RUN='$BUILD/dmnist-run' DMNIST_GPU_DATA='$DATA'
EOF

# ---- 3. the CUDA tests ------------------------------------------------------------------
PASSED=0 FAILED=0 SKIPPED=0 FAILED_NAMES=""
cases=("layer conv2d" "layer dense" "layer relu" "layer maxpool2d" "layer dropout" "layer flatten"
    "layer softmax_cross_entropy" "optimizer sgd" "optimizer adam" nccl nccl_gpus no_device train nan deterministic staging backend rdzv)
# --tests-only [CASE...]: the tests alone (those named, e.g. nan "layer conv2d"), no runs, no table
TESTS_ONLY=0
if [[ ${1:-} == --tests-only ]]; then
    TESTS_ONLY=1
    shift
    (($# == 0)) || cases=("$@")
fi
if [[ -x $BUILD/tests/cuda/test_cuda ]]; then
    for c in "${cases[@]}"; do
        name=${c// /_}
        rc=0
        (cd "$BUILD" && timeout 120 "$BUILD/tests/cuda/test_cuda" $c) >"$LOGS/test-$name.log" 2>&1 || rc=$?
        case $rc in
        0) PASSED=$((PASSED + 1)); say "   pass  $name" ;;
        77) SKIPPED=$((SKIPPED + 1)); say "   skip  $name: $(grep -m1 '^SKIP' "$LOGS/test-$name.log" | cut -c7-)" ;;
        *) FAILED=$((FAILED + 1)); FAILED_NAMES="$FAILED_NAMES $name"
           say "   FAIL  $name (exit $rc):"
           { grep -m5 'FAIL' "$LOGS/test-$name.log" || tail -3 "$LOGS/test-$name.log"; } | sed 's/^/           /' | tee -a "$LOGS/gpu-check.log" || true ;;
        esac
    done
else
    say "   no test_cuda binary: tests not run"
fi
say "-- tests: $PASSED passed, $FAILED failed, $SKIPPED skipped ($(elapsed) s)"

if ((TESTS_ONLY)); then
    [[ $FAILED -eq 0 ]] && exit 0
    exit 1
fi

# ---- 4. dmnist: one epoch of configs/cnn-gpu.ini, batch 64 and 512 -------------------------
declare -A ACC IPS EPOCH NOTE
run_dmnist() { # key batch
    local key=$1 batch=$2 rc=0
    rm -f "$LOGS/$key.jsonl"
    timeout 150 "$BUILD/dmnist-run" --no-progress "$REPO/configs/cnn-gpu.ini" --set data.path="$DATA" \
        --set data.batch_size="$batch" --metrics "$LOGS/$key.jsonl" >"$LOGS/$key.log" 2>&1 || rc=$?
    tail -3 "$LOGS/$key.log" | sed 's/^/   /' | tee -a "$LOGS/gpu-check.log" || true
    if [[ $rc -ne 0 ]] || ! grep -q '"event":"final"' "$LOGS/$key.jsonl" 2>/dev/null; then
        NOTE[$key]="FAILED (exit $rc, see $key.log)"
        return
    fi
    read -r ACC[$key] IPS[$key] EPOCH[$key] < <(python3 - "$LOGS/$key.jsonl" <<'EOF'
import json, sys
final = [json.loads(l) for l in open(sys.argv[1]) if '"final"' in l][-1]
ips = final["images_per_s"]
print(f'{100 * final["test_accuracy"]:.2f}%', f"{ips:.0f}", f"{60000 / ips if ips else 0:.3f}")
EOF
) || NOTE[$key]="ran, but its metrics could not be read ($key.jsonl)"
}
# The config's own batch (its accuracy is the recipe's), then 64 and 512.
CFG_BATCH=$(sed -n 's/^batch_size *= *\([0-9]*\).*/\1/p' "$REPO/configs/cnn-gpu.ini" | head -1)
BATCHES=("${CFG_BATCH:-64}")
for b in 64 512; do [[ $b == "${CFG_BATCH:-64}" ]] || BATCHES+=("$b"); done
for b in "${BATCHES[@]}"; do
    if [[ -x $BUILD/dmnist-run ]]; then
        say "-- dmnist: configs/cnn-gpu.ini, one epoch, batch $b"
        run_dmnist "dmnist-b$b" "$b"
    else
        NOTE[dmnist-b$b]="not built"
    fi
done
say "-- dmnist done ($(elapsed) s)"

# ---- 5. PyTorch reference ------------------------------------------------------------------
rm -f "$LOGS/torch.jsonl"
left=$((330 - $(elapsed)))
if ((left < 60)); then left=60; fi
say "-- PyTorch reference (eager, torch.compile; batch 64, 512), at most $left s"
rc=0
PYTHONUNBUFFERED=1 timeout "$left" python3 "$REPO/scripts/bench/torch_gpu.py" --data "$DATA" \
    --json "$LOGS/torch.jsonl" >"$LOGS/torch.log" 2>&1 || rc=$?
sed 's/^/   /' "$LOGS/torch.log" | tail -8 | tee -a "$LOGS/gpu-check.log" || true
[[ $rc -eq 0 ]] || say "   torch_gpu.py exit $rc (124 = out of time); rows it finished are kept"

# ---- 6. optional: the recipe over several seeds ------------------------------------------
# GPU_CHECK_SEEDS=1,2,3,4,5 runs configs/cnn-gpu.ini once per seed (scripts/seeds),
# plus any GPU_CHECK_RECIPES ("NAME=KEY=VALUE,... NAME=..."), within GPU_CHECK_SEEDS_S seconds.
if [[ -n ${GPU_CHECK_SEEDS:-} && -x $BUILD/dmnist-run ]]; then
    recipes=(--recipe config=)
    for r in ${GPU_CHECK_RECIPES:-}; do recipes+=(--recipe "$r"); done
    say "-- seeds $GPU_CHECK_SEEDS: ${recipes[*]} (at most ${GPU_CHECK_SEEDS_S:-240} s)"
    rc=0
    PYTHONUNBUFFERED=1 timeout "${GPU_CHECK_SEEDS_S:-240}" python3 "$REPO/scripts/seeds" "$REPO/configs/cnn-gpu.ini" \
        --seeds "$GPU_CHECK_SEEDS" "${recipes[@]}" --out "$LOGS/seeds" --dmnist-run "$BUILD/dmnist-run" \
        --set data.path="$DATA" >"$LOGS/seeds.log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || say "   scripts/seeds exit $rc (124 = out of time)"
fi

# ---- 7. the table ----------------------------------------------------------------------------
{
    echo
    echo "== results ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1); $BUILD_NOTE; $(elapsed) s)"
    echo "CUDA tests: $PASSED passed, $FAILED failed, $SKIPPED skipped${FAILED_NAMES:+ (failed:$FAILED_NAMES)}"
    printf '%-28s %6s %10s %12s %10s\n' "run" "batch" "test acc" "images/s" "s/epoch"
    for b in "${BATCHES[@]}"; do
        key=dmnist-b$b
        if [[ -n ${NOTE[$key]:-} ]]; then
            printf '%-28s %6s %s\n' "dmnist (cnn-gpu.ini)" "$b" "${NOTE[$key]}"
        else
            printf '%-28s %6s %10s %12s %10s\n' "dmnist (cnn-gpu.ini)" "$b" "${ACC[$key]}" "${IPS[$key]}" "${EPOCH[$key]}"
        fi
    done
    python3 - "$LOGS/torch.jsonl" <<'EOF' || echo "torch: no results (see torch.log)"
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
for r in rows:
    print(f'{"pytorch " + r["mode"]:<28} {r["batch"]:>6} {100 * r["test_accuracy"]:>9.2f}% '
          f'{r["images_per_s"]:>12.0f} {r["epoch_s"]:>10.3f}')
for mode in ("eager", "compile"):
    for b in (64, 512):
        if not any(r["mode"] == mode and r["batch"] == b for r in rows):
            print(f'{"pytorch " + mode:<28} {b:>6} not run (out of time or failed: see torch.log)')
EOF
    if [[ -f $LOGS/seeds/seeds.txt ]]; then
        echo "test accuracy over seeds (scripts/seeds, one epoch each):"
        cat "$LOGS/seeds/seeds.txt"
    fi
    echo "(dmnist images/s: training steps only, from the run's final line; s/epoch = 60000 / images/s."
    echo " pytorch: one timed epoch after 20 warm-up steps that include compilation.)"
} | tee "$LOGS/table.txt" | tee -a "$LOGS/gpu-check.log"
# Exit status: 0 only when no test failed and every dmnist run finished.
STATUS=0
[[ $FAILED -eq 0 ]] || STATUS=1
for b in "${BATCHES[@]}"; do [[ -z ${NOTE[dmnist-b$b]:-} ]] || STATUS=1; done
exit $STATUS
