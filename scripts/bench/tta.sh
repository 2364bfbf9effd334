#!/usr/bin/env bash
# Time to accuracy on real MNIST: the wall time from the start of training
# (set-up and data loading included) to the first evaluation of the 10,000
# test images that reaches the target accuracy, for dmnist and for PyTorch
# (scripts/bench/torch_cpu.py) on the same recipe, read from the INI file:
# batch size, learning rate, warm-up and decay, standardisation, evaluation
# interval and batch, and the epoch limit. Runs alternate (dmnist, torch, ...).
#
#   scripts/bench/tta.sh [--build DIR] [--config configs/cnn-fast.ini]
#       [--target 0.99] [--rounds 1] [--threads 2] [--python PY] [--keep DIR]
#
# dmnist is stopped once its --metrics file shows an evaluation at or above
# the target (the time comes from that event's time_s); torch_cpu.py stops
# by itself. A run that never reaches the target says so.
set -euo pipefail

. "$(dirname "$0")/common.sh"

build=${DMNIST_BUILD_DIR:-build}
config=configs/cnn-fast.ini
target=0.99
rounds=1
threads=2
python=${PYTHON:-}
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=${2:?}; shift 2 ;;
        --config) config=${2:?}; shift 2 ;;
        --target) target=${2:?}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        --threads) threads=${2:?}; shift 2 ;;
        --python) python=${2:?}; shift 2 ;;
        --keep) keep=${2:?}; shift 2 ;;
        -h|--help) bench_help; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$rounds'"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$threads'"
[[ $target =~ ^0?\.[0-9]+$ ]] || die "--target must be a fraction such as 0.99, got '$target'"
case "$config" in /*) ;; *) config="$root/$config" ;; esac
bench_find_run ""
[ -f "$config" ] || die "$config: no such file"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -e "$root/data/mnist/$f" ] || [ -e "$root/data/mnist/$f.gz" ] ||
        die "data/mnist/$f(.gz) is missing: scripts/get-mnist.sh fetches MNIST"
done
bench_find_python "or pass --python PY"

# The recipe, from the INI file (inline ';' comments allowed).
recipe=$(python3 - "$config" <<'EOF'
import configparser, sys
c = configparser.ConfigParser(inline_comment_prefixes=(";",))
c.read(sys.argv[1])
get = lambda s, k, d: c.get(s, k, fallback=d)
batch = int(get("data", "batch_size", "64"))
eval_batch = int(get("data", "eval_batch_size", "0")) or batch
std = get("data", "standardize", "false").lower() in ("1", "true", "yes", "on")
epochs = float(get("train", "epochs", "0"))
if epochs <= 0:
    epochs = int(get("train", "total_batches", "100")) * batch / 60000
every = int(get("train", "eval_every", "0"))
if every <= 0:
    sys.exit("tta.sh: the config needs train.eval_every > 0 (evaluations to time)")
print(batch, eval_batch, int(std), epochs, every, float(get("optimizer", "lr", "0.001")),
      int(get("optimizer", "warmup_steps", "0")), float(get("optimizer", "lr_decay_rate", "1")),
      int(get("optimizer", "lr_decay_steps", "0")), get("optimizer", "type", "adam"))
EOF
) || die "cannot read the recipe from $config"
read -r batch eval_batch std epochs every lr warmup decay_rate decay_steps opt <<<"$recipe"
[ "$opt" = adam ] || die "$config: the PyTorch reference implements Adam only (optimizer.type = $opt)"

work=$(mktemp -d)
dm_pid=""
cleanup() { [ -z "$dm_pid" ] || kill "$dm_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
[ -z "$keep" ] || mkdir -p "$keep"

# First evaluation at or above the target in a metrics file: "time_s step accuracy".
first_hit() {
    python3 - "$1" "$target" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue  # a line being written
    if e.get("event") == "eval" and e["test_accuracy"] >= float(sys.argv[2]):
        print(e["time_s"], e["step"], e["test_accuracy"])
        break
EOF
}

run_dmnist() {
    local tag=$1 m="$work/$1.metrics.json" log="$work/$1.log"
    : >"$m"
    (cd "$root" && OMP_NUM_THREADS=$threads exec "$run" "$config" --set experiment.threads="$threads" \
        --metrics "$m" --no-progress) >"$log" 2>&1 &
    dm_pid=$!
    local hit=""
    while kill -0 "$dm_pid" 2>/dev/null; do
        hit=$(first_hit "$m")
        [ -z "$hit" ] || break
        sleep 0.5
    done
    kill "$dm_pid" 2>/dev/null || true
    wait "$dm_pid" 2>/dev/null || true
    dm_pid=""
    [ -n "$hit" ] || hit=$(first_hit "$m")
    [ -z "$keep" ] || cp "$m" "$log" "$keep/"
    if [ -z "$hit" ]; then
        grep -q '"event":"eval"' "$m" || { tail -n 5 "$log" >&2; die "dmnist-run failed; log above"; }
        echo "not reached"
    else
        echo "$hit"
    fi
}

run_torch() {
    local tag=$1 log="$work/$1.log" args=()
    [ "$std" = 1 ] && args+=(--standardize)
    (cd "$root" && OMP_NUM_THREADS=$threads "$python" "$here/torch_cpu.py" --data "$root/data/mnist" \
        --batch "$batch" --lr "$lr" --warmup-lr-steps "$warmup" --lr-decay-rate "$decay_rate" \
        --lr-decay-steps "$decay_steps" --threads "$threads" "${args[@]}" \
        --target "$target" --epochs "$epochs" --eval-every "$every" --eval-batch "$eval_batch") \
        >"$log" 2>&1 || { tail -n 5 "$log" >&2; die "torch_cpu.py failed; log above"; }
    [ -z "$keep" ] || cp "$log" "$keep/"
    python3 - "$log" <<'EOF'
import json, sys
rec = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
print(f'{rec["time_s"]} {rec["step"]} {rec["test_accuracy"]}' if rec["reached"] else "not reached")
EOF
}

echo "time to $target test accuracy, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "recipe ($(basename "$config")): batch $batch, Adam lr $lr, warm-up $warmup steps," \
     "lr x $decay_rate every $decay_steps steps, standardize $std," \
     "eval every $every steps (batch $eval_batch), at most $epochs epochs; $threads threads"
echo "OMP_WAIT_POLICY ${OMP_WAIT_POLICY:-unset}; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
    d=$(run_dmnist "dmnist-r$r")
    echo "round $r: dmnist  ${d/ / s, step } (time_s, step, accuracy)"
    t=$(run_torch "torch-r$r")
    echo "round $r: PyTorch ${t/ / s, step } (time_s, step, accuracy)"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
