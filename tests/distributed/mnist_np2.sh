#!/usr/bin/env bash
# mnist_np2.sh BACKEND
#
# Two epochs of configs/cnn-epoch.ini on real MNIST with dmnist-run --np 2:
# each rank reads its own half of every global batch of 2 x 64, the
# learning rate is scaled to 2 x 0.001, the test set is split over the two
# ranks and combined. The combined test accuracy must reach 98.0%, the
# job must run 2 x 468 steps on 2 ranks, and the final metrics line must
# say world_size 2. Skipped (77) when data/mnist is missing.
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
backend=${1:?backend}
data=$SRC/data/mnist
if [ ! -e "$data/train-images-idx3-ubyte.gz" ] && [ ! -e "$data/train-images-idx3-ubyte" ]; then
    skip "no MNIST in $data (scripts/get-mnist.sh --from DIR puts it there)"
fi
cd "$SRC" || fail "cd $SRC"
# Rank 0's log lines as they come (ctest -V shows them live): this takes minutes.
echo "training configs/cnn-epoch.ini on 2 ranks ($backend): 936 steps, a log line every 100"
timeout -k 10 1700 "$RUN" --np 2 configs/cnn-epoch.ini --set experiment.backend="$backend" \
    --set train.log_every=100 --set train.sync_check_every=100 --no-progress \
    --metrics "$TMP/m.jsonl" 2>&1 | tee "$TMP/job.log" | grep --line-buffered -E '^\[rank 0\] |dmnist-run: '
rc=${PIPESTATUS[0]}
[ $rc = 0 ] || { show "$TMP/job.log"; fail "dmnist-run --np 2 exited with status $rc"; }
final=$(grep '"event":"final"' "$TMP/m.jsonl") || fail "no final metrics line"
acc=$(sed 's/.*"test_accuracy":\([^,]*\),.*/\1/' <<<"$final")
steps=$(sed 's/.*"steps":\([^,]*\),.*/\1/' <<<"$final")
ws=$(sed 's/.*"world_size":\([^,]*\),.*/\1/' <<<"$final")
[ "$ws" = 2 ] || fail "world_size $ws in the final line, expected 2"
[ "$steps" = 936 ] || fail "$steps steps, expected 2 epochs x 468 steps of 2 x 64"
grep -q "sync-check step 900: parameter hash" "$TMP/job.log" || fail "no sync check at step 900"
awk -v a="$acc" 'BEGIN { exit !(a >= 0.980) }' || fail "test accuracy $acc < 0.980"
ok "2 ranks ($backend), 2 epochs: test accuracy $acc >= 0.980 after $steps steps"
