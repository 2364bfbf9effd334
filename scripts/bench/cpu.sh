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
#
#   scripts/bench/cpu.sh [--build DIR] [--batch "64 256"] [--rounds 3]
#       [--steps 100] [--warmup 10] [--threads 2] [--wait-policy POLICY]
#       [--python PY] [--synthetic] [--keep DIR]
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
#   --synthetic    random data for both (the default is real MNIST from
#                  data/mnist when its four files are there, else synthetic)
#   --keep DIR     keep every run's log and metrics there
#
# Timing: dmnist's images/s comes from its --metrics step events (the time
# between the log line after the warm-up and the last one); torch_cpu.py
# times the same steps after the same warm-up. Neither includes start-up,
# data loading or dmnist's final test evaluation.
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

# One dmnist run: prints "images/s peak_rss_mb".
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
own = [e["peak_rss_mb"] for e in events if e.get("event") == "final"]
mb = int(open(rss).read().split()[-1]) / 1024 if os.path.exists(rss) else own[-1]
print(round((last - w) * b / (t[last] - t[w]), 1), round(mb, 1))
EOF
}

# One torch run: prints "images/s peak_rss_mb".
run_torch() {
    local b=$1 n=$2 tag=$3
    local log="$work/$tag.log" rss="$work/$tag.rss"
    if ! (cd "$root" && OMP_NUM_THREADS=$threads ${timer[@]+"${timer[@]}" "$rss"} \
            "$python" "$here/torch_cpu.py" "${torch_data[@]}" --batch "$b" --steps "$n" \
            --warmup-steps "$warmup" --threads "$threads" >"$log" 2>&1); then
        tail -n 5 "$log" >&2
        die "torch_cpu.py failed (batch $b); log above"
    fi
    [ -z "$keep" ] || cp "$log" "$keep/"
    python3 - "$log" "$rss" <<'EOF'
import json, os, sys
rec = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
mb = int(open(sys.argv[2]).read().split()[-1]) / 1024 if os.path.exists(sys.argv[2]) else rec["peak_rss_mb"]
print(rec["images_per_s"], round(mb, 1))
EOF
}

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "dmnist CPU benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
echo "machine: ${cpu:-unknown CPU}, $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "dmnist: $run, $(basename "$config"); PyTorch $torch_version ($torch_kind, $python)"
echo "both: $threads threads, OMP_WAIT_POLICY ${OMP_WAIT_POLICY:-unset, the libgomp default}; data: $data_note;" \
     "$warmup warm-up steps, then timed steps; $rounds interleaved rounds"
echo

results="$work/results.txt" # batch round impl images/s rss
for b in $batches; do
    n=$(steps_for "$b")
    for r in $(seq 1 "$rounds"); do
        read -r ips rss < <(run_dmnist "$b" "$n" "dmnist-b$b-r$r")
        echo "$b $r dmnist $ips $rss" >>"$results"
        echo "batch $b round $r: dmnist $ips images/s ($n steps, peak RSS $rss MB)"
        read -r ips rss < <(run_torch "$b" "$n" "torch-b$b-r$r")
        echo "$b $r torch $ips $rss" >>"$results"
        echo "batch $b round $r: torch  $ips images/s ($n steps, peak RSS $rss MB)"
    done
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$results" "$rss_note" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = statistics.median
print("| batch | dmnist images/s | PyTorch images/s | dmnist / PyTorch | dmnist peak RSS MB | PyTorch peak RSS MB |")
print("|---:|---:|---:|---:|---:|---:|")
for b in dict.fromkeys(r[0] for r in rows):
    get = lambda impl, col: {r[1]: float(r[col]) for r in rows if r[0] == b and r[2] == impl}
    d, t = get("dmnist", 3), get("torch", 3)
    ratios = [d[k] / t[k] for k in d if k in t and t[k] > 0]
    span = lambda v: f"{med(v):.0f} ({min(v):.0f}-{max(v):.0f})"
    print(f"| {b} | {span(list(d.values()))} | {span(list(t.values()))} | "
          f"{med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
          f"{max(get('dmnist', 4).values()):.0f} | {max(get('torch', 4).values()):.0f} |")
print("\nimages/s: median (min-max) over rounds; ratio: median (min-max) of the per-round ratios;")
print(f"peak RSS: the largest over rounds ({sys.argv[2]}).")
EOF
