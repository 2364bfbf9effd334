#!/usr/bin/env bash
# The lr schedule reaches the optimizer: the lr logged for every step follows
# warm-up + linear decay (or cosine) as worked out here; the losses differ
# from a constant-lr run from step 4 on (where the warm-ups part); and a run
# stopped at step 10 and resumed continues the schedule exactly.
set -u
run=$1
src=${DMNIST_SOURCE_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cfg=$src/tests/robustness/small.ini
common=(--set train.log_every=1 --set optimizer.lr=0.01 --set optimizer.warmup_steps=4)
lrs() { grep '"event":"step"' "$1" | sed 's/.*"lr":\([^,]*\),.*/\1/'; }
losses() { grep '"event":"step"' "$1" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
go() { local out=$1; shift; "$run" "$cfg" "${common[@]}" "$@" --metrics "$tmp/$out.jsonl" > "$tmp/$out.log" 2>&1 ||
         { echo "FAIL: run $out"; cat "$tmp/$out.log"; exit 1; }; }

go lin --set optimizer.schedule=linear --set optimizer.min_lr_frac=0.1
go cos --set optimizer.schedule=cosine
go const
# expected, step s = 1..20 (factor of 0-based step s-1), 16 decay steps after the warm-up
python3 - "$tmp/lin.jsonl" "$tmp/cos.jsonl" "$tmp/const.jsonl" <<'PY' || exit 1
import json, math, sys
def lrs(p): return [json.loads(l)["lr"] for l in open(p) if '"event":"step"' in l]
def want(kind, s):
    i = s - 1
    if i < 4: return 0.01 * (i + 1) / 4
    p = min(1.0, (i - 4) / 16)
    if kind == "linear": return 0.01 * (1 - 0.9 * p)
    if kind == "cosine": return 0.01 * 0.5 * (1 + math.cos(math.pi * p))
    return 0.01
bad = 0
for path, kind in zip(sys.argv[1:], ("linear", "cosine", "constant")):
    got = lrs(path)
    if len(got) != 20: print(f"FAIL: {kind}: {len(got)} logged steps, want 20"); bad = 1; continue
    for s, g in enumerate(got, 1):
        if abs(g - want(kind, s)) > 1e-6 * 0.01:
            print(f"FAIL: {kind}: step {s}: lr {g}, want {want(kind, s)}"); bad = 1; break
sys.exit(bad)
PY
if diff -q <(losses "$tmp/lin.jsonl" | head -4) <(losses "$tmp/const.jsonl" | head -4) >/dev/null; then :; else
  echo "FAIL: the first 4 steps (identical warm-up) gave different losses"; exit 1; fi
if diff -q <(losses "$tmp/lin.jsonl") <(losses "$tmp/const.jsonl") >/dev/null; then
  echo "FAIL: the linear schedule trained exactly like the constant lr"; exit 1; fi

# 10 steps, then resumed to 20: the same lr and losses as 20 straight. With
# decay_steps given, the schedule does not depend on the run's length.
sched=(--set optimizer.schedule=linear --set optimizer.min_lr_frac=0.1 --set optimizer.decay_steps=16)
go part "${sched[@]}" --set train.checkpoint_dir="$tmp/ck" --set train.total_batches=10
go rest "${sched[@]}" --set train.checkpoint_dir="$tmp/ck" --resume
grep -q "resuming from" "$tmp/rest.log" || { echo "FAIL: did not resume"; cat "$tmp/rest.log"; exit 1; }
diff <(lrs "$tmp/lin.jsonl" | tail -10) <(lrs "$tmp/rest.jsonl") || { echo "FAIL: resumed run's lr differs"; exit 1; }
diff <(losses "$tmp/lin.jsonl" | tail -10) <(losses "$tmp/rest.jsonl") ||
  { echo "FAIL: resumed run's losses differ"; exit 1; }
echo "ok: warm-up + linear/cosine/constant lr per step as computed; a resumed run continues the schedule"
