#!/usr/bin/env bash
# sync_hash.sh BACKEND
#
# After every step all ranks hold bitwise identical parameters:
#  1. two ranks (dmnist-run --np 2) with train.sync_check_every = 1 and
#     dropout on (each rank draws its own masks, so only the allreduce keeps
#     them together) must pass the check after each of 12 steps; the hashes
#     must change every step (they are over the live parameters), and the
#     last one must equal the FNV-1a hash that ckpt_tool hash computes on its
#     own over the final checkpoint;
#  2. two ranks that really diverge (rank 1 runs with another learning rate,
#     started by hand for gloo, as an MPMD job for mpirun) must be stopped at
#     step 1, every rank exiting non-zero with a message naming rank 1.
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
backend=${1:?backend}
STEPS=12

run_ok "$TMP/job.log" "$RUN" --np 2 "$CFG" "${SMALL[@]}" --set experiment.backend="$backend" \
    --set train.total_batches=$((2 * STEPS)) --set train.sync_check_every=1 --set train.log_every=4 \
    --set train.checkpoint_dir="$TMP/ckpt" --metrics "$TMP/m.jsonl"
grep '"event":"sync_check"' "$TMP/m.jsonl" >"$TMP/checks"
n=$(wc -l <"$TMP/checks")
[ "$n" = $STEPS ] || { show "$TMP/job.log"; fail "$n sync checks recorded, expected one per step ($STEPS)"; }
for ((s = 1; s <= STEPS; s++)); do
    grep -q "\"step\":$s,.*\"ranks\":2" "$TMP/checks" || fail "no two-rank sync check recorded at step $s"
done
grep -c "sync-check step .*: parameter hash [0-9a-f]\{16\} on all 2 ranks" "$TMP/job.log" | grep -qx $STEPS ||
    { show "$TMP/job.log"; fail "rank 0 did not print $STEPS sync-check lines"; }
distinct=$(sed 's/.*"hash":"\([0-9a-f]*\)".*/\1/' "$TMP/checks" | sort -u | wc -l)
[ "$distinct" = $STEPS ] || fail "only $distinct distinct hashes in $STEPS steps: the hash does not follow the parameters"
last=$(sed -n "s/.*\"step\":$STEPS,\"hash\":\"\([0-9a-f]*\)\".*/\1/p" "$TMP/checks")
file_hash=$("$TOOL" hash "$(checkpoint "$TMP/ckpt")") || fail "ckpt_tool hash failed"
[ "$last" = "$file_hash" ] || fail "step $STEPS: trainer's hash $last, the checkpoint's parameters hash to $file_hash"
ok "$backend: 2 ranks identical after each of $STEPS steps; last hash $last = the checkpoint's"

# A job whose rank 1 uses lr 0.0011 instead of 0.001. The job fingerprint
# would refuse it at start-up (job_identity.sh tests that): turned off here,
# so the replicas drift and the sync check must catch them.
export DMNIST_TEST_SKIP_JOB_CHECK=1
common=("$CFG" "${SMALL[@]}" --set experiment.backend="$backend" --set train.total_batches=$((2 * STEPS))
        --set train.sync_check_every=1 --set experiment.timeout_s=20)
if [ "$backend" = mpi ]; then
    timeout -k 5 60 "$MPIRUN" "${MPI_ARGS[@]}" -np 1 "$RUN" "${common[@]}" : \
        -np 1 "$RUN" "${common[@]}" --set optimizer.lr=0.0011 >"$TMP/bad.log" 2>&1
    rc=$?
    [ $rc != 0 ] && [ $rc != 124 ] && [ $rc != 137 ] || { show "$TMP/bad.log"; fail "diverging mpi job: status $rc"; }
    n_msg=$(grep -c "step 1: parameters differ between ranks.*rank 1 has" "$TMP/bad.log")
    [ "$n_msg" -ge 1 ] || { show "$TMP/bad.log"; fail "no message naming rank 1 at step 1"; }
else
    pids=()
    for r in 0 1; do
        lr=0.001
        [ $r = 1 ] && lr=0.0011
        DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" \
            timeout -k 5 60 "$RUN" "${common[@]}" --set optimizer.lr=$lr >"$TMP/bad$r.log" 2>&1 &
        pids+=($!)
    done
    for r in 0 1; do
        wait "${pids[$r]}"
        rc=$?
        [ $rc != 0 ] && [ $rc != 124 ] && [ $rc != 137 ] || { show "$TMP/bad$r.log"; fail "diverging gloo job: rank $r exited with $rc"; }
        grep -q "dmnist-run: step 1: parameters differ between ranks.*rank 1 has" "$TMP/bad$r.log" ||
            { show "$TMP/bad$r.log"; fail "rank $r: no message naming rank 1 at step 1"; }
    done
fi
ok "$backend: a rank with another learning rate is caught at step 1, naming rank 1"
grep -m1 "parameters differ" "$TMP"/bad*.log
