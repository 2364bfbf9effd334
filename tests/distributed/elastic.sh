#!/usr/bin/env bash
# elastic.sh CASE: experiment.elastic and dmnist-run --max-restarts on this
# machine (the namespace-host scenarios are tests/lab). The small model on
# synthetic data, experiment.timeout_s = 5, settle 0.5 s; every case is
# bounded (run_ok's 100 s, or the bound it states).
#   kill_rejoin  --np 3 --max-restarts 1, gloo: rank 1 killed at step >= 30
#                is started again and joins; the job succeeds, says "world
#                3 -> " in its log and a "world" event in --metrics, and
#                trains its global batch budget (less at most 2: what is left
#                after a change is divided by the new size, rounding down); no example is
#                skipped or seen twice within an epoch (DMNIST_TEST_TRACE_DATA)
#   kill_shrink  --np 3, no restarts, elastic = Yes: rank 2 killed; 2 ranks finish the
#                budget (as above), the learning rate scaled for 2 ranks
#   freeze       --np 3: rank 1 SIGSTOPped at step >= 30 is dropped after
#                the timeout (world 3 -> 2); SIGCONT: it rejoins (2 -> 3)
#   min_ranks    --np 2, min_ranks = 2: rank 1 killed; rank 0 cannot form a
#                world and fails within timeout + 20 s naming min_ranks
#   forged_round garbage in round 0's member list: the process never joins a
#                world it is not in; it fails in about 4 timeouts, one line
#   restart_BACKEND  not elastic: --np 2 --max-restarts 1 with checkpoints
#                every 5 steps; rank 1 killed after step 20; the job starts
#                again from its newest checkpoint and its final checkpoint
#                equals an uninterrupted run's bit for bit
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
case=${1:?case}
TOTAL=900 # global batches of 64: 300 steps at 3 ranks
args=("$CFG" "${SMALL[@]}" --set experiment.backend=gloo --set experiment.elastic=true
      --set experiment.timeout_s=5 --set experiment.elastic_settle_s=0.5 --set train.total_batches=$TOTAL
      --set train.log_every=10)

# start LOG ARGS...: a job in the background; JOB is its pid.
start() {
    local log=$1
    shift
    timeout -k 5 100 "$@" >"$log" 2>&1 &
    JOB=$!
    on_exit "kill -KILL -- $JOB 2>/dev/null; pkill -KILL -P $JOB 2>/dev/null"
}
# finish LOG: the job must succeed.
finish() {
    local rc=0
    wait "$JOB" || rc=$?
    [ $rc = 0 ] || { show "$1"; fail "the job exited with status $rc"; }
}
# signal_rank LOG STEP SIG RANK: once rank 0 logged STEP, SIG to that rank's process.
signal_rank() {
    wait_for_line "$1" "step +$2/" 60 "$JOB" || { show "$1"; fail "no step $2"; }
    local p
    p=$(rank_pid "$JOB" "$4") || fail "no process for rank $4"
    kill -"$3" "$p"
    echo "$p"
}
json() { python3 -c "import json,sys; [print(json.dumps(json.loads(l))) for l in open(sys.argv[1]) if '\"$2\"' in l]" "$3"; }
final_field() { python3 -c "import json,sys; print([json.loads(l) for l in open(sys.argv[1]) if '\"final\"' in l][-1][sys.argv[2]])" "$1" "$2"; }

# No example twice within an epoch; every epoch the job finished covers all
# but at most one global batch (the ragged tail). Lines of the trace: "step
# round rank epoch idx...". A step may appear from a round that later failed
# (the rank with the most steps carries the others on): the latest round wins.
check_trace() {
    python3 - "$@" <<'EOF'
import glob, sys, collections
prefix, n, maxglobal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for f in glob.glob(prefix + ".*"):
    for line in open(f):
        v = [int(x) for x in line.split()]
        step, rnd, rank, epoch, idx = v[0], v[1], v[2], v[3], v[4:]
        key = (step, rank)
        if key not in rows or rows[key][0] <= rnd:
            rows[key] = (rnd, epoch, idx)
# a step belongs to the round that last completed it
last_round = {}
for (step, rank), (rnd, epoch, idx) in rows.items():
    last_round[step] = max(last_round.get(step, -1), rnd)
seen = collections.defaultdict(list)
for (step, rank), (rnd, epoch, idx) in rows.items():
    if rnd == last_round[step]:
        seen[epoch] += idx
epochs = sorted(seen)
for e in epochs:
    c = collections.Counter(seen[e])
    twice = [i for i, k in c.items() if k > 1]
    if twice:
        sys.exit(f"epoch {e}: {len(twice)} examples seen twice, e.g. {twice[:5]}")
    if e != epochs[-1] and len(c) < n - maxglobal:
        sys.exit(f"epoch {e}: only {len(c)} of {n} examples trained")
print(f"{len(epochs)} epochs, no example twice, each full epoch at least {n - maxglobal} of {n}")
EOF
}

case $case in
kill_rejoin)
    export DMNIST_TEST_TRACE_DATA=$TMP/trace
    start "$TMP/log" "$RUN" --np 3 --max-restarts 1 "${args[@]}" --metrics "$TMP/m.json"
    signal_rank "$TMP/log" 30 KILL 1 >/dev/null
    finish "$TMP/log"
    grep -q "rank 1 was killed by signal 9; starting it again" "$TMP/log" || { show "$TMP/log"; fail "the launcher did not restart rank 1"; }
    grep -qE "elastic: world 3 -> [23] ranks" "$TMP/log" || { show "$TMP/log"; fail "no world change logged"; }
    json "$TMP/m.json" world "$TMP/m.json" | grep -q '"reason": "lost a rank"' || fail "no world event in --metrics"
    b=$(final_field "$TMP/m.json" global_batches)
    # after a change what is left is divided by the new world size, rounding down
    [ "$b" -le $TOTAL ] && [ "$b" -gt $((TOTAL - 3)) ] || fail "trained $b global batches, the budget is $TOTAL"
    out=$(check_trace "$TMP/trace" 4096 192) || fail "data order: $out"
    ok "rank 1 killed, restarted and rejoined; $b global batches; $out"
    ;;
kill_shrink)
    # "Yes": the launcher reads the key as the ranks do (any case of 1/true/yes/on)
    start "$TMP/log" "$RUN" --np 3 "${args[@]}" --set experiment.elastic=Yes --metrics "$TMP/m.json"
    signal_rank "$TMP/log" 30 KILL 2 >/dev/null
    finish "$TMP/log"
    grep -q "rank 2 was killed by signal 9; the others go on" "$TMP/log" || { show "$TMP/log"; fail "no launcher line"; }
    grep -q "elastic: world 3 -> 2 ranks" "$TMP/log" || { show "$TMP/log"; fail "no 3 -> 2"; }
    [ "$(final_field "$TMP/m.json" world_size)" = 2 ] || fail "final world size is not 2"
    b=$(final_field "$TMP/m.json" global_batches)
    # after a change what is left is divided by the new world size, rounding down
    [ "$b" -le $TOTAL ] && [ "$b" -gt $((TOTAL - 3)) ] || fail "trained $b global batches, the budget is $TOTAL"
    grep -qE "\[rank 0\] step +300/[0-9]+ .* lr 0.003$" "$TMP/log" && fail "step 300 with lr 0.003: not rescaled"
    tail -n 3 "$TMP/log" | grep -q "test accuracy" || fail "no final evaluation"
    grep -E "\[rank 0\] step .* lr 0.002$" "$TMP/log" >/dev/null || { show "$TMP/log"; fail "lr not scaled to 2 ranks"; }
    ok "3 -> 2 ranks, $b global batches, lr scaled to 2 ranks"
    ;;
freeze)
    start "$TMP/log" "$RUN" --np 3 "${args[@]}" --set train.total_batches=3000
    p=$(signal_rank "$TMP/log" 30 STOP 1)
    t0=$(now_ms)
    wait_for_line "$TMP/log" "world 3 -> 2 ranks" 20 "$JOB" || { show "$TMP/log"; fail "no 3 -> 2 after the freeze"; }
    t1=$(since_s "$t0")
    kill -CONT "$p"
    wait_for_line "$TMP/log" "world 2 -> 3 ranks .*a rank joined" 30 "$JOB" || { show "$TMP/log"; fail "the frozen rank did not rejoin"; }
    finish "$TMP/log"
    ok "frozen rank dropped after $t1 s (timeout 5 s), rejoined after SIGCONT"
    ;;
min_ranks)
    start "$TMP/log" "$RUN" --np 2 "${args[@]}" --set experiment.min_ranks=2 --set train.total_batches=100000
    signal_rank "$TMP/log" 20 KILL 1 >/dev/null
    t0=$(now_ms)
    wait "$JOB" && { show "$TMP/log"; fail "the job succeeded with fewer than min_ranks"; }
    el=$(since_s "$t0")
    (( ${el%.*} < 25 )) || fail "took $el s to give up (bound: timeout 5 s + 20 s on a busy machine)"
    grep -q "min_ranks" "$TMP/log" || { show "$TMP/log"; fail "the failure does not name min_ranks"; }
    ok "one survivor of two with min_ranks = 2 gave up after $el s: $(grep -o 'experiment.elastic: round.*' "$TMP/log" | head -1)"
    ;;
forged_round)
    # garbage where round 0's member list belongs: the process cannot get in and says so, bounded
    mkdir -m 0700 -p "$TMP/rdzv/elastic.j1/r0" && head -c 3000 /dev/urandom >"$TMP/rdzv/elastic.j1/r0/closed"
    t0=$(now_ms)
    run_fails "$TMP/log" 1 env DMNIST_RANK=0 DMNIST_WORLD_SIZE=1 DMNIST_JOB_ID=j1 DMNIST_RENDEZVOUS=file://$TMP/rdzv \
        "$RUN" "${args[@]}" --set experiment.timeout_s=1 --set experiment.elastic_settle_s=0
    el=$(since_s "$t0")
    grep -q "waited [0-9]* s to join job .* and no world took this process in" "$TMP/log" || { show "$TMP/log"; fail "no clear message"; }
    [ "$(grep -c . "$TMP/log")" = 1 ] || { show "$TMP/log"; fail "more than one line"; }
    ok "a forged round 0 is refused after $el s: $(cat "$TMP/log")"
    ;;
restart_*)
    backend=${case#restart_}
    [ "$backend" = mpi ] && ! command -v "$MPIRUN" >/dev/null && skip "no mpirun"
    base=("$CFG" "${SMALL[@]}" --set experiment.backend="$backend" --set experiment.timeout_s=5
          --set train.total_batches=80 --set train.log_every=5 --set train.checkpoint_every=5)
    run_ok "$TMP/ref.log" "$RUN" --np 2 "${base[@]}" --set train.checkpoint_dir="$TMP/ref"
    start "$TMP/log" "$RUN" --np 2 --max-restarts 1 "${base[@]}" --set train.checkpoint_dir="$TMP/ck"
    signal_rank "$TMP/log" 20 KILL 1 >/dev/null
    finish "$TMP/log"
    grep -q "starting it again from .*ckpt-" "$TMP/log" || { show "$TMP/log"; fail "the job was not restarted from a checkpoint"; }
    a=$("$TOOL" hash "$TMP/ref/ckpt-0000000040.dmck") && b=$("$TOOL" hash "$TMP/ck/ckpt-0000000040.dmck") ||
        fail "no final checkpoints"
    [ "$a" = "$b" ] || fail "restarted run's final parameters $b differ from the uninterrupted run's $a"
    ok "$backend: killed after step 20, restarted from $(grep -o 'starting it again from .*ckpt-[0-9]*' "$TMP/log" | grep -o 'ckpt-[0-9]*'); final hash $b as uninterrupted"
    ;;
*) fail "unknown case $case" ;;
esac
