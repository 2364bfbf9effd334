#!/usr/bin/env bash
# dmnist against PyTorch on the CPU, in one command: the seed CNN
# (configs/cnn.ini) trained by dmnist-run and by scripts/bench/torch_cpu.py
# (the same model, initialisation, Adam, batch and data), interleaved
# (dmnist, torch, dmnist, torch, ...) so both see the same machine load, at
# each batch size, on the same number of threads. Prints one table: training
# images/s of each (median over rounds), the ratio (median of the per-round
# ratios: each round's two runs are neighbours in time), and peak resident
# memory (/usr/bin/time's maximum RSS of the whole process, for both; where
# /usr/bin/time is missing, each program's own getrusage() ru_maxrss).
# TensorFlow (scripts/bench/tf_cpu.py, the same model in Keras) is a third
# peer in every round when a Python with tensorflow is found (--tf-python,
# $TF_PYTHON, then /work/tf-venv/bin/python), run with TF_ENABLE_ONEDNN_OPTS=1;
# otherwise its row says "skipped: not installed". The header names the CPU,
# its vector features and the kernels dmnist's run-time dispatch picks
# (`dmnist-run --version`; DMNIST_CPU_ISA forces a copy, docs/cpu-path.md).
#
#   scripts/bench/cpu.sh [--build DIR] [--batch "64 256"] [--rounds 3]
#       [--steps 100] [--warmup 10] [--threads 2] [--wait-policy POLICY]
#       [--python PY] [--tf-python PY] [--synthetic] [--keep DIR]
#
#   --build DIR    dmnist build folder (default: $DMNIST_BUILD_DIR or build)
#   --batch LIST   batch sizes (default "64 256")
#   --rounds N     interleaved rounds per batch size (default 3)
#   --steps N      timed steps at batch 64 (default 100); other batches run
#                  the same number of images (at least 20 steps), rounded up
#                  to a multiple of --warmup
#   --warmup N     untimed steps before the timed ones (default 10)
#   --threads N    threads for both (default 2: this machine's cores)
#   --wait-policy P   OMP_WAIT_POLICY for both (passive or active; default:
#                  the environment's, normally unset: libgomp spins a while,
#                  then sleeps). On a busy machine passive is much faster for
#                  both (docs/cpu-path.md).
#   --python PY    the Python with torch (default: $PYTHON, then Debian's
#                  /usr/bin/python3, then python3 on PATH)
#   --tf-python PY the Python with tensorflow (default: $TF_PYTHON, then
#                  /work/tf-venv/bin/python); --tf-python none skips TensorFlow
#   --synthetic    random data for both (the default is real MNIST from
#                  data/mnist when its four files are there, else synthetic)
#   --keep DIR     keep every run's log and metrics there
#
# Timing: dmnist's images/s comes from its --metrics step events (the time
# between the log line after the warm-up and the last one); torch_cpu.py
# and tf_cpu.py time the same steps after the same warm-up. None includes
# start-up, data loading or dmnist's final test evaluation. CPU ms per image
# is the process's user + system CPU time over the same steps (dmnist's step
# events carry cpu_s; the peers report cpu_s_per_step): on a shared machine
# the wall clock measures the share of the cores each program wins, the CPU
# time what it spends.
set -euo pipefail

. "$(dirname "$0")/common.sh"

build=${DMNIST_BUILD_DIR:-build}
batches="64 256"
rounds=3
steps=100
warmup=10
threads=2
wait_policy=${OMP_WAIT_POLICY:-}
python=${PYTHON:-}
tf_python=${TF_PYTHON:-}
synthetic=0
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=${2:?}; shift 2 ;;
        --batch) batches=${2:?}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        --steps) steps=${2:?}; shift 2 ;;
        --warmup) warmup=${2:?}; shift 2 ;;
        --threads) threads=${2:?}; shift 2 ;;
        --wait-policy) wait_policy=${2:?}; shift 2 ;;
        --python) python=${2:?}; shift 2 ;;
        --tf-python) tf_python=${2:?}; shift 2 ;;
        --synthetic) synthetic=1; shift ;;
        --keep) keep=${2:?}; shift 2 ;;
        -h|--help) bench_help; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
for v in rounds steps warmup threads; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$v must be a positive integer, got '${!v}'"
done
for b in $batches; do [[ $b =~ ^[1-9][0-9]*$ ]] || die "--batch: '$b' is not a positive integer"; done
case "${wait_policy,,}" in
    "") unset OMP_WAIT_POLICY ;;
    passive|active) export OMP_WAIT_POLICY=$wait_policy ;;
    *) die "--wait-policy must be passive or active, got '$wait_policy'" ;;
esac

bench_find_run " (cmake -S . -B build && cmake --build build -j2)"
# Peak RSS from /usr/bin/time for both programs; without it, each reports its own.
timer=()
rss_note="/usr/bin/time maximum RSS"
if [ -x /usr/bin/time ]; then
    timer=(/usr/bin/time -f '%M' -o)
else
    rss_note="each program's own ru_maxrss (no /usr/bin/time)"
fi

# The Python that has torch: the caller's choice, Debian's, then PATH's.
bench_find_python "apt-get install python3-torch, or pip install torch; or --python PY"
torch_where=$("$python" -c 'import torch, sys; print(torch.__version__, torch.__file__)') ||
    die "$python cannot import torch"
torch_version=${torch_where%% *}
case "${torch_where#* }" in
    /usr/lib/python3/dist-packages/*) torch_kind="Debian python3-torch" ;;
    *) torch_kind="PyPI/pip" ;;
esac

# The Python with tensorflow, if any (TensorFlow is optional).
tf_version=""
if [ "$tf_python" != none ]; then
    for p in ${tf_python:-/work/tf-venv/bin/python}; do
        if v=$(TF_CPP_MIN_LOG_LEVEL=3 "$p" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null); then
            tf_python=$p tf_version=$v
        fi
    done
fi

data_note="MNIST (data/mnist)"
config="$root/configs/cnn.ini"
torch_data=(--data "$root/data/mnist")
if [ "$synthetic" = 0 ]; then
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        if [ ! -e "$root/data/mnist/$f" ] && [ ! -e "$root/data/mnist/$f.gz" ]; then
            synthetic=1
            data_note="synthetic (data/mnist is incomplete: scripts/get-mnist.sh fetches it)"
        fi
    done
else
    data_note="synthetic (--synthetic)"
fi
if [ "$synthetic" = 1 ]; then
    config="$root/configs/cnn-synthetic.ini"
    torch_data=(--synthetic)
fi
tf_data=("${torch_data[@]}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -z "$keep" ] || mkdir -p "$keep"

# steps for batch B: the images of --steps batches of 64, at least 20
# steps, rounded up to a multiple of the warm-up (dmnist logs every
# `warmup` steps, and the timed span runs from one log line to the last).
steps_for() {
    local b=$1 n
    n=$(( (steps * 64 + b - 1) / b ))
    [ "$n" -ge 20 ] || n=20
    echo $(( (n + warmup - 1) / warmup * warmup ))
}

# One dmnist run: prints "images/s peak_rss_mb cpu_ms_per_image".
run_dmnist() {
    local b=$1 n=$2 tag=$3
    local m="$work/$tag.metrics.json" log="$work/$tag.log" rss="$work/$tag.rss"
    if ! (cd "$root" && OMP_NUM_THREADS=$threads ${timer[@]+"${timer[@]}" "$rss"} \
            "$run" "$config" $((warmup + n)) "$b" --set train.log_every="$warmup" \
            --set experiment.threads="$threads" --metrics "$m" --no-progress >"$log" 2>&1); then
        tail -n 5 "$log" >&2
        die "dmnist-run failed (batch $b); log above"
    fi
    [ -z "$keep" ] || cp "$m" "$log" "$keep/"
    python3 - "$m" "$rss" "$warmup" "$((warmup + n))" "$b" <<'EOF'
import json, os, sys
m, rss, w, last, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
events = [json.loads(l) for l in open(m)]
t = {e["step"]: e["time_s"] for e in events if e.get("event") == "step"}
c = {e["step"]: e.get("cpu_s", 0) for e in events if e.get("event") == "step"}
own = [e["peak_rss_mb"] for e in events if e.get("event") == "final"]
mb = int(open(rss).read().split()[-1]) / 1024 if os.path.exists(rss) else own[-1]
print(round((last - w) * b / (t[last] - t[w]), 1), round(mb, 1), round(1e3 * (c[last] - c[w]) / ((last - w) * b), 3))
EOF
}

# peer_result LOG RSS: a peer script's last JSON line as "images/s peak_rss_mb cpu_ms_per_image".
peer_result() {
    [ -z "$keep" ] || cp "$1" "$keep/"
    python3 - "$1" "$2" <<'EOF'
import json, os, sys
rec = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
mb = int(open(sys.argv[2]).read().split()[-1]) / 1024 if os.path.exists(sys.argv[2]) else rec["peak_rss_mb"]
print(rec["images_per_s"], round(mb, 1), round(1e3 * rec["cpu_s_per_step"] / rec["batch"], 3))
EOF
}


# One torch run: prints "images/s peak_rss_mb cpu_ms_per_image".
run_torch() {
    local b=$1 n=$2 tag=$3
    local log="$work/$tag.log" rss="$work/$tag.rss"
    if ! (cd "$root" && OMP_NUM_THREADS=$threads ${timer[@]+"${timer[@]}" "$rss"} \
            "$python" "$here/torch_cpu.py" "${torch_data[@]}" --batch "$b" --steps "$n" \
            --warmup-steps "$warmup" --threads "$threads" >"$log" 2>&1); then
        tail -n 5 "$log" >&2
        die "torch_cpu.py failed (batch $b); log above"
    fi
    peer_result "$log" "$rss"
}

# One TensorFlow run: prints "images/s peak_rss_mb cpu_ms_per_image".
run_tf() {
    local b=$1 n=$2 tag=$3
    local log="$work/$tag.log" rss="$work/$tag.rss"
    if ! (cd "$root" && OMP_NUM_THREADS=$threads TF_ENABLE_ONEDNN_OPTS=1 TF_CPP_MIN_LOG_LEVEL=2 \
            ${timer[@]+"${timer[@]}" "$rss"} "$tf_python" "$here/tf_cpu.py" "${tf_data[@]}" --batch "$b" \
            --steps "$n" --warmup-steps "$warmup" --threads "$threads" >"$log" 2>&1); then
        tail -n 5 "$log" >&2
        die "tf_cpu.py failed (batch $b); log above"
    fi
    peer_result "$log" "$rss"
}

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "dmnist CPU benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
echo "machine: ${cpu:-unknown CPU} (family $(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -n 1)," \
     "model $(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(nproc) cores;" \
     "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "vector features (/proc/cpuinfo): $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
    grep -xE 'sse4_2|avx|avx2|fma|avx512f|avx512bw|avx512vl|avx512dq|avx512_vnni|avx512_bf16' | tr '\n' ' ')"
echo "dmnist $("$run" --version | tail -n 1)"
echo "dmnist: $run, $(basename "$config"); PyTorch $torch_version ($torch_kind, $python)"
if [ -n "$tf_version" ]; then
    echo "TensorFlow $tf_version ($tf_python, TF_ENABLE_ONEDNN_OPTS=1)"
else
    echo "TensorFlow: skipped: not installed (no tensorflow in ${tf_python:-/work/tf-venv/bin/python}; --tf-python PY)"
fi
echo "both: $threads threads, OMP_WAIT_POLICY ${OMP_WAIT_POLICY:-unset, the libgomp default}; data: $data_note;" \
     "$warmup warm-up steps, then timed steps; $rounds interleaved rounds"
echo

results="$work/results.txt" # batch round impl images/s rss
for b in $batches; do
    n=$(steps_for "$b")
    for r in $(seq 1 "$rounds"); do
        read -r ips rss cpu < <(run_dmnist "$b" "$n" "dmnist-b$b-r$r")
        echo "$b $r dmnist $ips $rss $cpu" >>"$results"
        echo "batch $b round $r: dmnist $ips images/s ($n steps, peak RSS $rss MB, $cpu CPU ms/image)"
        read -r ips rss cpu < <(run_torch "$b" "$n" "torch-b$b-r$r")
        echo "$b $r torch $ips $rss $cpu" >>"$results"
        echo "batch $b round $r: torch  $ips images/s ($n steps, peak RSS $rss MB, $cpu CPU ms/image)"
        if [ -n "$tf_version" ]; then
            read -r ips rss cpu < <(run_tf "$b" "$n" "tf-b$b-r$r")
            echo "$b $r tf $ips $rss $cpu" >>"$results"
            echo "batch $b round $r: tf     $ips images/s ($n steps, peak RSS $rss MB, $cpu CPU ms/image)"
        fi
    done
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$results" "$rss_note" "$torch_version" "$tf_version" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
torch_v, tf_v = sys.argv[3], sys.argv[4]
med = statistics.median
names = {"dmnist": "dmnist", "torch": "PyTorch " + torch_v, "tf": "TensorFlow " + tf_v}
print("| batch | program | images/s | dmnist / program | CPU ms per image | peak RSS MB |")
print("|---:|---|---:|---:|---:|---:|")
for b in dict.fromkeys(r[0] for r in rows):
    get = lambda impl, col: {r[1]: float(r[col]) for r in rows if r[0] == b and r[2] == impl}
    d = get("dmnist", 3)
    span = lambda v: f"{med(v):.0f} ({min(v):.0f}-{max(v):.0f})"
    for impl in ("dmnist", "torch", "tf"):
        v = get(impl, 3)
        if not v:
            print(f"| {b} | TensorFlow | skipped: not installed | | | |")
            continue
        if impl == "dmnist":
            ratio = "1"
        else:
            ratios = [d[k] / v[k] for k in d if k in v and v[k] > 0]
            ratio = f"**{med(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})"
        cpu = list(get(impl, 5).values())
        print(f"| {b} | {names[impl]} | {span(list(v.values()))} | {ratio} | "
              f"{med(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f}) | {max(get(impl, 4).values()):.0f} |")
print("\nimages/s: median (min-max) over rounds; ratio: median (min-max) of the per-round ratios")
print("(each round's runs are neighbours in time); CPU ms per image: user + system CPU time of the")
print("process over the timed steps / images (all threads; what the machine's load does not change much);")
print(f"peak RSS: the largest over rounds ({sys.argv[2]}).")
EOF
