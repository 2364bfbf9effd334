#!/usr/bin/env bash
# A SIGTERM (or Ctrl-C) to `dmnist-run --np 2` stops every rank, not just the launcher:
# exit 128+15 within a few seconds and no rank left running.
set -u
command -v pgrep >/dev/null || { echo "skipped: no pgrep to count the ranks left (Debian package procps)"; exit 77; }
run=$1
src=${DMNIST_SOURCE_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tag="sigtest-$$"
"$run" --np 2 "$src/configs/cnn-synthetic.ini" --no-progress --set experiment.backend=gloo \
    --set experiment.name="$tag" --set experiment.threads=1 --set data.train_size=4096 \
    --set train.total_batches=1000000 --set train.log_every=1 > "$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do grep -qE "step +[0-9]+/" "$tmp/log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if ! grep -qE "step +[0-9]+/" "$tmp/log"; then
    if kill -0 $pid 2>/dev/null; then kill -9 $pid; echo "FAIL: training never started (20 s)"
    else wait $pid; echo "FAIL: dmnist-run --np 2 exited with status $? before the first step"; fi
    tail -n 15 "$tmp/log"
    exit 1
fi
kill -TERM $pid
start=$(date +%s)
wait $pid; rc=$?
took=$(( $(date +%s) - start ))
sleep 0.5
left=$(pgrep -f "experiment.name=$tag" | grep -vx "$$" | wc -l)
grep -q "signal 15: stopping all 2 ranks" "$tmp/log" || { echo "FAIL: no stop message"; tail -5 "$tmp/log"; exit 1; }
[ "$rc" -eq 143 ] || { echo "FAIL: exit $rc, expected 143"; tail -5 "$tmp/log"; exit 1; }
[ "$took" -le 8 ] || { echo "FAIL: took $took s to stop"; exit 1; }
[ "$left" -eq 0 ] || { echo "FAIL: $left rank process(es) still running"; pkill -9 -f "experiment.name=$tag"; exit 1; }
echo "ok: SIGTERM stopped both ranks in $took s, exit $rc"
