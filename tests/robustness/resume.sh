#!/usr/bin/env bash
# --resume is exact, and works with a different number of ranks.
#
#   resume_exact           200 steps == 100 steps + a resumed 100, bit for bit
#                          (parameters, optimizer state, positions; dropout on)
#   resume_exact_threads2  the same with two threads per rank
#   resume_exact_mnist     the same on the seed CNN and real MNIST (skipped
#                          without data/mnist)
#   resume_reshard_gloo    1 rank -> 2 ranks (gloo) -> 1 rank: positions in the
#                          data continue, the world size is recorded, and the
#                          re-sharded run repeats exactly
source "$(dirname "$0")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini

# exact CONFIG TOTAL ARGS...: TOTAL steps straight vs TOTAL/2 + a resumed TOTAL/2.
exact() {
    local cfg=$1 total=$2 half=$(($2 / 2))
    shift 2
    run_ok "$TMP/a.log" "$RUN" --set train.checkpoint_dir="$TMP/a" --set train.checkpoint_every=$half "$@" "$cfg" $total
    run_ok "$TMP/b1.log" "$RUN" --set train.checkpoint_dir="$TMP/b" "$@" "$cfg" $half
    run_ok "$TMP/b2.log" "$RUN" --resume --set train.checkpoint_dir="$TMP/b" "$@" "$cfg" $total
    grep -q "resuming from $(ckpt "$TMP/b" $half) (step $half, written by 1 rank)" "$TMP/b2.log" ||
        { cat "$TMP/b2.log"; fail "the resumed run did not start from step $half"; }
    "$TOOL" same "$(ckpt "$TMP/a" $half)" "$(ckpt "$TMP/b" $half)" || fail "step $half differs between the runs"
    "$TOOL" same "$(ckpt "$TMP/a" $total)" "$(ckpt "$TMP/b" $total)" ||
        fail "$total straight steps differ from $half + $half resumed"
    cmp "$(ckpt "$TMP/a" $total)" "$(ckpt "$TMP/b" $total)" || fail "the final checkpoint files differ"
    # The comparison must be able to fail: another seed gives other bits
    # (checked on the small model only, where a run costs nothing).
    [ "$cfg" = "$CFG" ] && run_ok "$TMP/c.log" "$RUN" --set train.checkpoint_dir="$TMP/c" --set experiment.seed=8 "$@" "$cfg" $total
    if [ "$cfg" = "$CFG" ] && "$TOOL" same "$(ckpt "$TMP/a" $total)" "$(ckpt "$TMP/c" $total)" >/dev/null; then
        fail "seed 8 gave seed 7's parameters: the comparison proves nothing"
    fi
    ok "$total steps == $half + resumed $half, bit for bit ($(field "$(ckpt "$TMP/a" $total)" n_params) parameters)"
}

case ${1:-} in
resume_exact) exact "$CFG" 200 ;;
resume_exact_threads2) exact "$CFG" 200 --set experiment.threads=2 ;;
resume_exact_mnist)
    [ -f "$SRC/data/mnist/train-images-idx3-ubyte.gz" ] || [ -f "$SRC/data/mnist/train-images-idx3-ubyte" ] ||
        skip "no MNIST in $SRC/data/mnist (scripts/get-mnist.sh)"
    exact "$SRC/configs/cnn.ini" 16 --set data.path="$SRC/data/mnist" --set data.batch_size=32 \
        --set data.eval_batch_size=1000 --set experiment.threads=2
    ;;
resume_reshard_gloo)
    has_plugin gloo || skip "no gloo backend plugin"
    gloo=(--set experiment.backend=gloo --set experiment.timeout_s=30)
    # 40 steps on 1 rank (16 examples each), then 2 ranks to step 80 (32 each).
    run_ok "$TMP/r1.log" "$RUN" --set train.checkpoint_dir="$TMP/r" "$CFG" 40
    cp -r "$TMP/r" "$TMP/r-copy"
    run_ok "$TMP/r2.log" "$RUN" --np 2 --resume "${gloo[@]}" --set train.checkpoint_dir="$TMP/r" "$CFG" 160
    grep -q "resuming from $(ckpt "$TMP/r" 40) (step 40, written by 1 rank)" "$TMP/r2.log" ||
        { cat "$TMP/r2.log"; fail "2 ranks did not resume from the 1-rank checkpoint"; }
    f=$(ckpt "$TMP/r" 80)
    expect_field "$f" step 80
    expect_field "$f" epoch 0
    expect_field "$f" epoch_pos $((40 * 16 + 40 * 32))
    expect_field "$f" world_size 2
    grep -Eq 'test accuracy [01]\.[0-9]+' "$TMP/r2.log" || { cat "$TMP/r2.log"; fail "no test accuracy"; }
    # The re-sharded continuation is itself deterministic.
    run_ok "$TMP/r2b.log" "$RUN" --np 2 --resume "${gloo[@]}" --set train.checkpoint_dir="$TMP/r-copy" "$CFG" 160
    "$TOOL" same "$f" "$(ckpt "$TMP/r-copy" 80)" || fail "two re-sharded runs from the same checkpoint differ"
    # And back to 1 rank: 20 more steps of 16 cross into epoch 1 (2000 examples).
    run_ok "$TMP/r3.log" "$RUN" --resume --set train.checkpoint_dir="$TMP/r" "$CFG" 100
    grep -q "(step 80, written by 2 ranks)" "$TMP/r3.log" || { cat "$TMP/r3.log"; fail "1 rank did not resume from step 80"; }
    f=$(ckpt "$TMP/r" 100)
    expect_field "$f" step 100
    expect_field "$f" epoch 1
    expect_field "$f" epoch_pos $((20 * 16 - (2000 - 1920)))
    expect_field "$f" world_size 1
    ok "1 rank (40 steps) -> 2 ranks (to 80) -> 1 rank (to 100): positions continue, re-shard repeats exactly"
    ;;
*) echo "usage: resume.sh resume_exact|resume_exact_threads2|resume_exact_mnist|resume_reshard_gloo"; exit 2 ;;
esac
