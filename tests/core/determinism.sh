#!/usr/bin/env bash
# The same seed gives the identical loss sequence twice (dropout on); another seed does not.
set -u
run=$1
src=${DMNIST_SOURCE_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--set data.type=synthetic --set data.train_size=2048 --set data.test_size=256
      --set train.total_batches=12 --set train.log_every=1 --set data.batch_size=32)
for r in a b; do
  "$run" "$src/configs/cnn-synthetic.ini" "${args[@]}" --metrics "$tmp/$r.jsonl" > "$tmp/$r.log" 2>&1 || { cat "$tmp/$r.log"; exit 1; }
done
"$run" "$src/configs/cnn-synthetic.ini" "${args[@]}" --set experiment.seed=43 --metrics "$tmp/c.jsonl" > "$tmp/c.log" 2>&1 || { cat "$tmp/c.log"; exit 1; }
losses() { grep '"event":"step"' "$1" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
n=$(losses "$tmp/a.jsonl" | wc -l)
[ "$n" -eq 12 ] || { echo "FAIL: expected 12 logged steps, got $n"; exit 1; }
if ! diff <(losses "$tmp/a.jsonl") <(losses "$tmp/b.jsonl"); then echo "FAIL: same seed, different losses"; exit 1; fi
if diff -q <(losses "$tmp/a.jsonl") <(losses "$tmp/c.jsonl") >/dev/null; then echo "FAIL: seed 43 gave seed 42's losses"; exit 1; fi
echo "ok: 12 identical losses with seed 42 twice; seed 43 differs"
losses "$tmp/a.jsonl" | head -3
