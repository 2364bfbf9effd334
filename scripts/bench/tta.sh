#!/usr/bin/env bash
# Time to accuracy on real MNIST: the wall time from process start to the
# end of the first evaluation of the 10,000 test images that reaches the
# target accuracy, for dmnist over several seeds, and for PyTorch
# (scripts/bench/torch_cpu.py) on the same recipe as a comparison row: the
# model of the INI file's [layer.*] sections (dm_torch_model.from_ini), batch,
# learning rate, warm-up and schedule (linear/cosine to 0, or adam's
# exponential decay), standardisation, evaluation interval and batch, and the
# epoch limit. Prints one table: seed, time to target, step, accuracy.
#
#   scripts/bench/tta.sh [--build DIR] [--config configs/speedrun-cpu.ini]
#       [--seeds "1 2 3 4 5"] [--torch-seeds "1" | none] [--target 0.99]
#       [--threads 2] [--python PY] [--keep DIR]
#
# dmnist runs with train.target_accuracy = TARGET, so it stops by itself at
# the first evaluation at or above it and logs a "target" event (time_s from
# the start of training set-up). The table's time is the process's wall time
# from exec to the end of that evaluation: this script's clock around the
# whole run, less what the run did after the hit (final summary) by dmnist's
# own clock. torch_cpu.py counts from just after `import torch` (its
# interpreter and import time, about 1-2 s, are not counted). A run that never
# reaches the target says so.
set -euo pipefail

. "$(dirname "$0")/common.sh"

build=${DMNIST_BUILD_DIR:-build}
config=configs/speedrun-cpu.ini
target=0.99
seeds="1 2 3 4 5"
torch_seeds="1"
threads=2
python=${PYTHON:-}
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=${2:?}; shift 2 ;;
        --config) config=${2:?}; shift 2 ;;
        --target) target=${2:?}; shift 2 ;;
        --seeds) seeds=${2:?}; shift 2 ;;
        --torch-seeds) torch_seeds=${2:?}; shift 2 ;;
        --threads) threads=${2:?}; shift 2 ;;
        --python) python=${2:?}; shift 2 ;;
        --keep) keep=${2:?}; shift 2 ;;
        -h|--help) bench_help; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[ "$torch_seeds" != none ] || torch_seeds=""
for s in $seeds $torch_seeds; do [[ $s =~ ^[0-9]+$ ]] || die "seeds must be integers, got '$s'"; done
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$threads'"
[[ $target =~ ^0?\.[0-9]+$ ]] || die "--target must be a fraction such as 0.99, got '$target'"
case "$config" in /*) ;; *) config="$root/$config" ;; esac
bench_find_run ""
[ -f "$config" ] || die "$config: no such file"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -e "$root/data/mnist/$f" ] || [ -e "$root/data/mnist/$f.gz" ] ||
        die "data/mnist/$f(.gz) is missing: scripts/get-mnist.sh fetches MNIST"
done
[ -z "$torch_seeds" ] || bench_find_python "or pass --python PY, or --torch-seeds none"

# The recipe, from the INI file (inline ';' comments allowed).
recipe=$(python3 - "$config" <<'PY'
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
sched = get("optimizer", "schedule", "constant")
if sched not in ("linear", "cosine"):
    sched = "exp"
if int(get("optimizer", "decay_steps", "0")) or float(get("optimizer", "min_lr_frac", "0")):
    sys.exit("tta.sh: optimizer.decay_steps / min_lr_frac have no PyTorch mirror here")
print(batch, eval_batch, int(std), epochs, every, float(get("optimizer", "lr", "0.001")),
      int(get("optimizer", "warmup_steps", "0")), float(get("optimizer", "lr_decay_rate", "1")),
      int(get("optimizer", "lr_decay_steps", "0")), get("optimizer", "type", "adam"), sched)
PY
) || die "cannot read the recipe from $config"
read -r batch eval_batch std epochs every lr warmup decay_rate decay_steps opt sched <<<"$recipe"
[ -z "$torch_seeds" ] || [ "$opt" = adam ] ||
    die "$config: the PyTorch reference implements Adam only (optimizer.type = $opt); --torch-seeds none"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -z "$keep" ] || mkdir -p "$keep"

# One dmnist run: "wall_s step accuracy" (wall_s from exec to the end of the
# evaluation that reached the target) or "- - best".
run_dmnist() {
    local seed=$1 m="$work/dmnist-s$1.metrics.json" log="$work/dmnist-s$1.log"
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$root" && OMP_NUM_THREADS=$threads exec "$run" "$config" --set experiment.seed="$seed" \
        --set experiment.threads="$threads" --set train.target_accuracy="$target" \
        --metrics "$m" --no-progress) >"$log" 2>&1 || { tail -n 5 "$log" >&2; die "dmnist-run failed; log above"; }
    t1=$(date +%s.%N)
    [ -z "$keep" ] || cp "$m" "$log" "$keep/"
    python3 - "$m" "$t0" "$t1" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
hit = [e for e in ev if e["event"] == "target"]
fin = [e for e in ev if e["event"] == "final"][-1]
if hit:
    # the run ends right after the evaluation that hit (final checkpoint, if
    # any, and the summary): wall to the hit = total wall - (final wall - hit time)
    wall = float(sys.argv[3]) - float(sys.argv[2]) - (fin["wall_s"] - hit[0]["time_s"])
    print(f"{wall:.2f} {hit[0]['step']} {hit[0]['test_accuracy']:.4f} {hit[0]['time_s']:.2f}")
else:
    print(f"- - {fin['test_accuracy']:.4f} -")
PY
}

run_torch() {
    local seed=$1 log="$work/torch-s$1.log" args=()
    [ "$std" = 1 ] && args+=(--standardize)
    (cd "$root" && OMP_NUM_THREADS=$threads "$python" "$here/torch_cpu.py" --data "$root/data/mnist" \
        --model-ini "$config" --seed "$seed" --batch "$batch" --lr "$lr" --warmup-lr-steps "$warmup" \
        --schedule "$sched" --lr-decay-rate "$decay_rate" --lr-decay-steps "$decay_steps" \
        --threads "$threads" "${args[@]}" --target "$target" --epochs "$epochs" --eval-every "$every" \
        --eval-batch "$eval_batch") >"$log" 2>&1 || { tail -n 5 "$log" >&2; die "torch_cpu.py failed; log above"; }
    [ -z "$keep" ] || cp "$log" "$keep/"
    python3 - "$log" <<'PY'
import json, sys
rec = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
print(f'{rec["time_s"]:.2f} {rec["step"]} {rec["test_accuracy"]:.4f}' if rec["reached"]
      else f'- - {rec["test_accuracy"]:.4f}')
PY
}

steps_per_epoch=$((60000 / batch))
echo "time to $target test accuracy, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores"
echo "dmnist $("$run" --version | tail -n 1)"
echo "recipe ($(basename "$config")): batch $batch, Adam lr $lr, warm-up $warmup steps, schedule $sched," \
     "standardize $std, eval every $every steps (batch $eval_batch), at most $epochs epochs" \
     "($steps_per_epoch steps each); $threads threads"
echo "OMP_WAIT_POLICY ${OMP_WAIT_POLICY:-unset}; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
rows="$work/rows"
for s in $seeds; do
    read -r wall step acc inner < <(run_dmnist "$s")
    echo "dmnist  seed $s: $wall s, step $step, accuracy $acc (load $(cut -d' ' -f1 /proc/loadavg))"
    echo "dmnist $s $wall $step $acc" >>"$rows"
done
for s in $torch_seeds; do
    read -r t step acc < <(run_torch "$s")
    echo "PyTorch seed $s: $t s, step $step, accuracy $acc (load $(cut -d' ' -f1 /proc/loadavg))"
    echo "torch $s $t $step $acc" >>"$rows"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$rows" "$steps_per_epoch" "$target" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
spe, target = int(sys.argv[2]), float(sys.argv[3])
print(f"| program | seed | time to {100 * target:.1f}% (s) | step (epochs) | test accuracy |")
print("|---|---:|---:|---:|---:|")
for impl, seed, t, step, acc in rows:
    name = "dmnist" if impl == "dmnist" else "PyTorch 1.13"
    ep = f"{step} ({int(step) / spe:.2f})" if step != "-" else "not reached"
    print(f"| {name} | {seed} | {t if t != '-' else 'not reached'} | {ep} | {100 * float(acc):.2f}% |")
d = [float(r[2]) for r in rows if r[0] == "dmnist" and r[2] != "-"]
n = sum(1 for r in rows if r[0] == "dmnist")
if n:
    print(f"\ndmnist: {len(d)}/{n} seeds reached {100 * target:.1f}%"
          + (f"; time median {statistics.median(d):.2f} s, worst {max(d):.2f} s" if d else ""))
PY
