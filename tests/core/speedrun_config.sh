#!/usr/bin/env bash
# configs/speedrun-cpu.ini: it parses, its model is what its comments say, a
# short run on it stops at a (low) target accuracy, and the PyTorch mirror
# that scripts/bench/tta.sh compares against (dm_torch_model.from_ini) has
# the same number of parameters (when a Python with torch is there).
set -u
run=$1
src=${DMNIST_SOURCE_DIR:?}
cfg="$src/configs/speedrun-cpu.ini"
fail() { echo "FAIL: $*"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$src"
"$run" "$cfg" --dry-run >"$tmp/dry.log" 2>&1 || { cat "$tmp/dry.log"; fail "--dry-run failed"; }
params=$(sed -n 's/^total parameters: \([0-9]*\).*/\1/p' "$tmp/dry.log")
[ "$params" = 108618 ] || fail "expected 108618 parameters, the summary says '$params'"
grep -q "target_accuracy.*0.99" "$tmp/dry.log" || fail "train.target_accuracy = 0.99 not in the resolved config"
echo "ok: $cfg parses, $params parameters"
for p in /usr/bin/python3 python3; do
  if "$p" -c 'import torch' 2>/dev/null; then
    n=$("$p" -c "import sys; sys.path.insert(0, 'scripts/bench'); import dm_torch_model as m
print(sum(p.numel() for p in m.from_ini('$cfg').parameters()))") || fail "from_ini failed"
    [ "$n" = "$params" ] || fail "the PyTorch mirror has $n parameters, dmnist $params"
    echo "ok: the PyTorch mirror has the same $n parameters"
    break
  fi
done
if [ ! -e data/mnist/train-images-idx3-ubyte.gz ] && [ ! -e data/mnist/train-images-idx3-ubyte ]; then
  echo "SKIP: no MNIST for the short run"; exit 77
fi
"$run" "$cfg" --no-progress --metrics "$tmp/m.jsonl" --set train.eval_every=30 \
  --set train.target_accuracy=0.8 --set experiment.threads=1 >"$tmp/run.log" 2>&1 ||
  { tail -5 "$tmp/run.log"; fail "short run failed"; }
grep -q '"event":"target"' "$tmp/m.jsonl" || { tail -5 "$tmp/run.log"; fail "no 80% within the first evaluations"; }
step=$(sed -n 's/.*"event":"target","step":\([0-9]*\).*/\1/p' "$tmp/m.jsonl")
[ "$step" -le 150 ] || fail "80% only at step $step"
echo "ok: a short run reaches 80% at step $step and stops"
