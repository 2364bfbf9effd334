#!/usr/bin/env bash
# train.target_accuracy: a run stops at the first evaluation at or above it,
# says when, and reports that evaluation as its final one (no second pass over
# the test set); a target never reached runs every step; a target without
# train.eval_every is refused. Uses tests/eval/mnist-small.ini (seconds).
set -u
run=$1
src=${DMNIST_SOURCE_DIR:?}
data="$src/data/mnist"
if [ ! -e "$data/train-images-idx3-ubyte.gz" ] && [ ! -e "$data/train-images-idx3-ubyte" ]; then
  echo "SKIP: no MNIST in $data (run scripts/get-mnist.sh)"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cfg="$src/tests/eval/mnist-small.ini"
fail() { echo "FAIL: $*"; exit 1; }
field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }

# 1. A target the small model passes at its first evaluation (step 20 of 40:
#    about 33% after 20 steps of 32): the run ends there.
"$run" "$cfg" --no-progress --metrics "$tmp/hit.jsonl" --set train.target_accuracy=0.25 >"$tmp/hit.log" 2>&1 ||
  { cat "$tmp/hit.log"; fail "dmnist-run failed"; }
cat "$tmp/hit.log"
target=$(grep '"event":"target"' "$tmp/hit.jsonl") || fail "no target event in the metrics"
final=$(grep '"event":"final"' "$tmp/hit.jsonl") || fail "no final event"
[ "$(field "$target" step)" = 20 ] || fail "target event at step $(field "$target" step), expected 20"
[ "$(field "$final" steps)" = 20 ] || fail "the run went on to step $(field "$final" steps) after reaching the target"
[ "$(grep -c '"event":"eval"' "$tmp/hit.jsonl")" = 1 ] || fail "expected exactly one evaluation event"
eval_acc=$(field "$(grep '"event":"eval"' "$tmp/hit.jsonl")" test_accuracy)
[ "$(field "$final" test_accuracy)" = "$eval_acc" ] || fail "final accuracy differs from the evaluation that hit"
awk -v a="$eval_acc" 'BEGIN { exit !(a >= 0.25) }' || fail "stopped at accuracy $eval_acc < 0.25"
grep -q "target accuracy 0.2500 reached at step 20 (test accuracy .*), [0-9.]* s after start" "$tmp/hit.log" ||
  fail "no 'target accuracy ... reached' line"
! grep -q "evaluating on" "$tmp/hit.log" || fail "announced a final evaluation after reaching the target"

# 2. A target out of reach: all 40 steps, the evaluation at 20 and the final one.
"$run" "$cfg" --no-progress --metrics "$tmp/miss.jsonl" --set train.target_accuracy=0.9999 >"$tmp/miss.log" 2>&1 ||
  { cat "$tmp/miss.log"; fail "dmnist-run failed (unreached target)"; }
! grep -q '"event":"target"' "$tmp/miss.jsonl" || fail "a target event for an unreached target"
[ "$(field "$(grep '"event":"final"' "$tmp/miss.jsonl")" steps)" = 40 ] || fail "unreached target: not 40 steps"

# 3. Reached only by the final evaluation (step 40: about 75%; step 20: 33%).
"$run" "$cfg" --no-progress --metrics "$tmp/last.jsonl" --set train.target_accuracy=0.7 >"$tmp/last.log" 2>&1 ||
  { cat "$tmp/last.log"; fail "dmnist-run failed (target at the end)"; }
target=$(grep '"event":"target"' "$tmp/last.jsonl") || fail "no target event when the final evaluation reaches it"
[ "$(field "$target" step)" = 40 ] || fail "final-evaluation target event at step $(field "$target" step), expected 40"

# 4. Without evaluations there is nothing to check the target at.
if "$run" "$cfg" --no-progress --set train.target_accuracy=0.9 --set train.eval_every=0 >"$tmp/bad.log" 2>&1; then
  fail "target_accuracy without eval_every was accepted"
fi
grep -q "train.target_accuracy needs train.eval_every > 0" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "wrong message"; }
echo "ok: target_accuracy stops at the first evaluation that reaches it"
