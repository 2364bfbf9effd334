#!/usr/bin/env bash
# End to end on real MNIST. `seed`: configs/cnn.ini (100 batches of 64) must reach 90% test accuracy
# and write a complete metrics file; `epochs`: two epochs of configs/cnn-epoch.ini must reach 98.3%.
set -u
run=$1 mode=$2
src=${DMNIST_SOURCE_DIR:?}
data="$src/data/mnist"
if [ ! -e "$data/train-images-idx3-ubyte.gz" ] && [ ! -e "$data/train-images-idx3-ubyte" ]; then
  echo "SKIP: no MNIST in $data (run scripts/get-mnist.sh)"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$src"
if [ "$mode" = seed ]; then cfg=configs/cnn.ini; want=0.90; else cfg=configs/cnn-epoch.ini; want=0.983; fi
# Every log line as it comes (ctest -V shows them live): the two-epoch run takes minutes.
echo "training $cfg (mode $mode); a log line every train.log_every steps"
"$run" "$cfg" --no-progress --metrics "$tmp/m.jsonl" 2>&1 | tee "$tmp/log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "FAIL: dmnist-run failed"; exit 1; }
final=$(grep '"event":"final"' "$tmp/m.jsonl")
[ -n "$final" ] || { echo "FAIL: no final metrics line"; exit 1; }
for k in test_loss test_accuracy steps images_per_s wall_s; do
  [[ "$final" == *"\"$k\":"* ]] || { echo "FAIL: final line lacks $k: $final"; exit 1; }
done
acc=$(sed 's/.*"test_accuracy":\([^,]*\),.*/\1/' <<<"$final")
steps=$(sed 's/.*"steps":\([^,]*\),.*/\1/' <<<"$final")
if [ "$mode" = seed ]; then [ "$steps" -eq 100 ] || { echo "FAIL: $steps steps, expected 100"; exit 1; }; fi
if [ "$mode" = epochs ]; then [ "$steps" -eq 1874 ] || { echo "FAIL: $steps steps, expected 2 x 937"; exit 1; }; fi
awk -v a="$acc" -v w="$want" 'BEGIN { exit !(a >= w) }' || { echo "FAIL: test accuracy $acc < $want"; exit 1; }
echo "ok: $cfg test accuracy $acc >= $want after $steps steps"
