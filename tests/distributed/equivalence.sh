#!/usr/bin/env bash
# equivalence.sh BACKEND N
#
# Data parallelism must not change the maths: with dropout off and the
# learning rate not scaled, N ranks with batch B/N follow the parameter
# trajectory of one rank with batch B over the same examples (every step
# consumes the same B examples of the epoch's permutation; the average of
# the N per-rank mean gradients is the mean gradient over B).
#
# For SGD with momentum and for Adam (the default; Adam alone would not
# notice gradients summed instead of averaged: it is invariant to their
# scale), the final parameters after 20 steps of the N-rank job
# (dmnist-run --np N) and of the one-rank job must agree. Only float32
# rounding separates them: sums over a batch split N ways are added in
# another order. Tolerances, max |a - b| and |a - b|_2 / |b|_2:
#   SGD:  1e-5 and 1e-5. Its update is linear in the gradient, so rounding
#         stays rounding: measured 3e-8 and 2e-8.
#   Adam: 5e-4 and 1e-4. Adam scales every coordinate's step to about lr
#         (0.001) whatever the gradient's size, so a coordinate whose
#         gradient is nearly zero (a sum that cancels) takes lr-sized steps
#         in directions set by rounding: measured up to 7.6e-5 and 2.5e-5
#         for N = 4 (1e-7 and 5e-8 for N = 2). The bound is half an Adam
#         step; gradients summed instead of averaged land 4e-3 away.
# A control run of one rank with batch B/N (the same start, another
# trajectory; measured 0.025 and 0.13 away) must differ by more than the
# tolerance, so the comparison can tell trajectories apart.
# The N = 4 cases also cut the gradients into several fused buckets
# (fusion_mb = 0.05), the N = 2 cases one bucket per layer (fusion_mb = 0).
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
backend=${1:?backend} n=${2:?ranks}
B=32
[ $((B % n)) = 0 ] || fail "N = $n does not divide the batch $B"
b=$((B / n))
fusion=0
[ "$n" -ge 4 ] && fusion=0.05
declare -A TOL_ABS=([adam]=5e-4 [sgd]=1e-5) TOL_REL=([adam]=1e-4 [sgd]=1e-5)

EQ=("${SMALL[@]}" --set layer.drop1.rate=0 --set layer.drop2.rate=0 --set optimizer.scale_lr=false
    --set train.log_every=5)
ADAM=(--set optimizer.type=adam --set optimizer.lr=0.001)
SGD=(--set optimizer.type=sgd --set optimizer.lr=0.02 --set optimizer.momentum=0.9)

for opt in adam sgd; do
    if [ $opt = adam ]; then o=("${ADAM[@]}"); else o=("${SGD[@]}"); fi
    run_ok "$TMP/ref-$opt.log" "$RUN" "$CFG" "${EQ[@]}" "${o[@]}" --set data.batch_size=$B \
        --set train.total_batches=20 --set train.checkpoint_dir="$TMP/ref-$opt"
    run_ok "$TMP/dist-$opt.log" "$RUN" --np "$n" "$CFG" "${EQ[@]}" "${o[@]}" --set experiment.backend="$backend" \
        --set data.batch_size=$b --set train.total_batches=$((20 * n)) --set train.fusion_mb=$fusion \
        --set train.checkpoint_dir="$TMP/dist-$opt"
    grep -q "$n ranks ($backend), device cpu, 20 steps of $n x $b images" "$TMP/dist-$opt.log" ||
        { show "$TMP/dist-$opt.log"; fail "the job did not run 20 steps on $n $backend ranks"; }
    ref=$(checkpoint "$TMP/ref-$opt") dist=$(checkpoint "$TMP/dist-$opt")
    if ! out=$("$TOOL" within "$dist" "$ref" "${TOL_ABS[$opt]}" "${TOL_REL[$opt]}"); then
        fail "$opt: $n x $b on $backend against 1 x $B: $out (tolerance max_abs ${TOL_ABS[$opt]}, rel_l2 ${TOL_REL[$opt]})"
    fi
    ok "$opt: $n ranks x $b ($backend, fusion_mb $fusion) against 1 rank x $B: $out"
done

# The control: one rank with batch b is another trajectory.
run_ok "$TMP/ctl.log" "$RUN" "$CFG" "${EQ[@]}" "${ADAM[@]}" --set data.batch_size=$b \
    --set train.total_batches=20 --set train.checkpoint_dir="$TMP/ctl"
if ! out=$("$TOOL" beyond "$(checkpoint "$TMP/ctl")" "$(checkpoint "$TMP/ref-adam")" "${TOL_ABS[adam]}" "${TOL_REL[adam]}"); then
    fail "control: 1 rank x $b is within the tolerance of 1 rank x $B ($out): the comparison is blind"
fi
ok "control: 1 rank x $b against 1 rank x $B: $out"
