#!/usr/bin/env bash
# Layer state (ABI 1.1): the batchnorm example's running statistics live in
# the core's state buffer, so they are checkpointed, resumed exactly, and
# the same on every rank. batchnorm.ini is small.ini with two batchnorm layers.
#
#   state_resume_exact   100 steps == 50 + a resumed 50, bit for bit, the layer
#                        state included; resuming from a format-1 copy of the
#                        step-50 file (which cannot hold the state) gives the
#                        same parameters but other running statistics, and
#                        the comparison says so
#   state_ckpt_version1  a format-1 file (written by ckpt_tool's own writer)
#                        still resumes, to the bits of the format-2 original,
#                        and its header size is checked against version 1's
#   state_broadcast_gloo 2 ranks (gloo): after every step both ranks hold the
#                        same running statistics (train.sync_check_every = 1
#                        hashes them), equal to the checkpoint's state region;
#                        resumed on 2 ranks, rank 1 evaluates with rank 0's
#                        restored statistics (same test loss as 1 rank)
#   dry_run_device       batchnorm has only a CPU implementation: with
#                        experiment.device = cuda, --dry-run refuses it with
#                        the run's one line and exit status 2 (it builds
#                        its summary on the CPU and used to say nothing);
#                        device = cpu still passes; with a GPU, the run
#                        itself refuses it the same way
source "$(dirname "$0")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini
BN=(--plugin-path "${DMNIST_TEST_BATCHNORM:?DMNIST_TEST_BATCHNORM must name the batchnorm plugin folder}")
BCFG=$SRC/tests/robustness/batchnorm.ini
"$RUN" "${BN[@]}" --list-plugins 2>/dev/null | awk '$2 == "batchnorm" { f = 1 } END { exit !f }' ||
    fail "no batchnorm plugin in $DMNIST_TEST_BATCHNORM"

# test_loss LOG: the final test loss a run printed.
test_loss() { sed -n 's/^\(\[rank 0\] \)\{0,1\}test loss \([0-9.]*\) .*/\2/p' "$1"; }

case ${1:-} in
dry_run_device)
    run_ok "$TMP/cpu.log" "$RUN" "${BN[@]}" --dry-run "$BCFG"
    # The first CPU-only layer is named: batchnorm's bn1 in a CUDA build,
    # conv1 already in a build without CUDA (the sanitizer build).
    first=bn1 type=batchnorm
    "$RUN" --help-plugin conv2d 2>/dev/null | grep -q 'devices: cpu cuda' || first=conv1 type=conv2d
    want="dmnist-run: $BCFG:[0-9]+: layer\.$first: layer type '$type' has no cuda implementation"
    timeout -k 5 100 "$RUN" "${BN[@]}" --dry-run --set experiment.device=cuda "$BCFG" >"$TMP/dry.out" 2>"$TMP/dry.err"
    rc=$?
    [ $rc = 2 ] || { cat "$TMP/dry.err"; fail "--dry-run with device = cuda exited $rc, expected 2"; }
    [ "$(wc -l <"$TMP/dry.err")" = 1 ] && grep -Eq "^$want\$" "$TMP/dry.err" ||
        fail "--dry-run with device = cuda: expected one line '$want', got: $(cat "$TMP/dry.err")"
    echo "ok: --dry-run: $(cat "$TMP/dry.err")"
    if "$RUN" --dry-run --set experiment.device=cuda "$CFG" >/dev/null 2>&1 &&
       timeout -k 5 100 "$RUN" --set experiment.device=cuda "$CFG" 1 >/dev/null 2>&1; then
        timeout -k 5 100 "$RUN" "${BN[@]}" --set experiment.device=cuda "$BCFG" 1 >"$TMP/run.out" 2>"$TMP/run.err"
        rc=$?
        [ $rc = 2 ] && grep -Eq "^$want\$" "$TMP/run.err" ||
            { cat "$TMP/run.err"; fail "the run with device = cuda: exit $rc, expected 2 and '$want'"; }
        echo "ok: the run (on the GPU) refuses it the same way"
    else
        echo "no usable GPU: the run's own refusal is not compared"
    fi
    ok "--dry-run refuses a CPU-only layer under device = cuda, as the run does"
    ;;
state_resume_exact)
    run_ok "$TMP/a.log" "$RUN" "${BN[@]}" --set train.checkpoint_dir="$TMP/a" --set train.checkpoint_every=50 "$BCFG" 100
    run_ok "$TMP/b1.log" "$RUN" "${BN[@]}" --set train.checkpoint_dir="$TMP/b" "$BCFG" 50
    run_ok "$TMP/b2.log" "$RUN" "${BN[@]}" --resume --set train.checkpoint_dir="$TMP/b" "$BCFG" 100
    grep -q "resuming from $(ckpt "$TMP/b" 50) (step 50, written by 1 rank)" "$TMP/b2.log" ||
        { cat "$TMP/b2.log"; fail "the resumed run did not start from step 50"; }
    a50=$(ckpt "$TMP/a" 50) a100=$(ckpt "$TMP/a" 100)
    expect_field "$a100" version 2
    expect_field "$a100" n_state 48 # bn1: 2 x 4 channels, bn2: 2 x 16, each slice padded to 16 floats
    [ "$(field "$a50" state_fnv)" != "$(field "$a100" state_fnv)" ] ||
        fail "the running statistics did not change between steps 50 and 100"
    "$TOOL" same "$a50" "$(ckpt "$TMP/b" 50)" || fail "step 50 differs between the runs"
    "$TOOL" same "$a100" "$(ckpt "$TMP/b" 100)" || fail "100 straight steps differ from 50 + 50 resumed"
    cmp "$a100" "$(ckpt "$TMP/b" 100)" || fail "the final checkpoint files differ"
    grep -q "^test loss $(test_loss "$TMP/a.log") " "$TMP/b2.log" || fail "the resumed run evaluates differently"
    # Teeth: without the state (a format-1 copy cannot hold it) the parameters
    # still match (training uses batch statistics) but the running
    # statistics do not, and `same` must say so.
    mkdir "$TMP/c"
    "$TOOL" v1 "$(ckpt "$TMP/b" 50)" "$(ckpt "$TMP/c" 50)" >/dev/null || fail "ckpt_tool v1 failed"
    run_ok "$TMP/c.log" "$RUN" "${BN[@]}" --resume --set train.checkpoint_dir="$TMP/c" "$BCFG" 100
    grep -q "holds no layer state: the layers' running state starts from its initial values" "$TMP/c.log" ||
        { cat "$TMP/c.log"; fail "no note that the format-1 file holds no layer state"; }
    "$TOOL" same "$a100" "$(ckpt "$TMP/c" 100)" >"$TMP/same.txt" && fail "losing the layer state went unnoticed"
    grep -q "^layer state [0-9]* differs" "$TMP/same.txt" || { cat "$TMP/same.txt"; fail "same did not blame the layer state"; }
    grep -q "^parameter " "$TMP/same.txt" && { cat "$TMP/same.txt"; fail "the parameters depend on the running statistics"; }
    ok "batchnorm: 100 steps == 50 + resumed 50, bit for bit with 48 floats of layer state; without it: $(head -1 "$TMP/same.txt")"
    ;;
state_ckpt_version1)
    run_ok "$TMP/a.log" "$RUN" --set train.checkpoint_dir="$TMP/a" --set train.checkpoint_every=20 "$CFG" 40
    mkdir "$TMP/v1"
    "$TOOL" v1 "$(ckpt "$TMP/a" 20)" "$(ckpt "$TMP/v1" 20)" >/dev/null || fail "ckpt_tool v1 failed"
    expect_field "$(ckpt "$TMP/v1" 20)" version 1
    expect_field "$(ckpt "$TMP/a" 20)" version 2
    [ $(($(stat -c %s "$(ckpt "$TMP/a" 20)") - $(stat -c %s "$(ckpt "$TMP/v1" 20)"))) = 8 ] ||
        fail "format 2 should be format 1 plus the 8-byte n_state field"
    "$TOOL" same "$(ckpt "$TMP/a" 20)" "$(ckpt "$TMP/v1" 20)" || fail "the format-1 copy reads back differently"
    cp -r "$TMP/v1" "$TMP/bad"
    run_ok "$TMP/r.log" "$RUN" --resume --set train.checkpoint_dir="$TMP/v1" "$CFG" 40
    grep -q "resuming from $(ckpt "$TMP/v1" 20) (step 20" "$TMP/r.log" || { cat "$TMP/r.log"; fail "did not resume from the format-1 file"; }
    grep -q "holds no layer state" "$TMP/r.log" && fail "a note about layer state for a model without any"
    cmp "$(ckpt "$TMP/a" 40)" "$(ckpt "$TMP/v1" 40)" || fail "resuming from format 1 did not give the straight run's file"
    # version 1's header is 64 bytes after the size field, not version 2's 72
    printf 'H\000\000\000' | dd of="$(ckpt "$TMP/bad" 20)" bs=1 seek=12 conv=notrunc status=none
    run_fails "$TMP/bad.log" 1 "$RUN" --resume --set train.checkpoint_dir="$TMP/bad" "$CFG" 40
    grep -q "corrupt checkpoint header: it says 72 header bytes follow, version 1 has 64" "$TMP/bad.log" ||
        { cat "$TMP/bad.log"; fail "a format-1 file with format 2's header size was not refused as such"; }
    ok "a format-1 checkpoint resumes to the same bits as its format-2 original; its header size is version 1's"
    ;;
state_broadcast_gloo)
    has_plugin gloo || skip "no gloo backend plugin"
    gloo=(--set experiment.backend=gloo --set experiment.timeout_s=30)
    steps=12
    run_ok "$TMP/j.log" "$RUN" --np 2 "${BN[@]}" "${gloo[@]}" --set train.sync_check_every=1 \
        --set train.checkpoint_dir="$TMP/g" --metrics "$TMP/m.jsonl" "$BCFG" $((2 * steps))
    grep -c "^\[rank 0\] sync-check step [0-9]*: parameter hash [0-9a-f]\{16\} on all 2 ranks, layer state hash [0-9a-f]\{16\}$" \
        "$TMP/j.log" | grep -qx $steps || { cat "$TMP/j.log"; fail "not $steps sync checks of parameters and layer state"; }
    distinct=$(sed -n 's/.*"state_hash":"\([0-9a-f]*\)".*/\1/p' "$TMP/m.jsonl" | sort -u | wc -l)
    [ "$distinct" = $steps ] || fail "$distinct distinct layer-state hashes in $steps steps: the check does not follow the statistics"
    last=$(sed -n "s/^\[rank 0\] sync-check step $steps: .*layer state hash \([0-9a-f]*\)$/\1/p" "$TMP/j.log")
    f=$(ckpt "$TMP/g" $steps)
    expect_field "$f" state_fnv "$last"
    expect_field "$f" world_size 2
    # Resumed on 2 ranks with no step left, each rank evaluates half of the
    # test set with the statistics it received from rank 0: the same test
    # loss as one rank evaluating everything (rank 1 with its initial
    # statistics would be far off).
    cp -r "$TMP/g" "$TMP/g1"
    run_ok "$TMP/e2.log" "$RUN" --np 2 --resume "${BN[@]}" "${gloo[@]}" --set train.checkpoint_dir="$TMP/g" "$BCFG" $((2 * steps))
    run_ok "$TMP/e1.log" "$RUN" --resume "${BN[@]}" --set train.checkpoint_dir="$TMP/g1" "$BCFG" $steps
    l2=$(test_loss "$TMP/e2.log") l1=$(test_loss "$TMP/e1.log")
    [ -n "$l1" ] && [ -n "$l2" ] || { cat "$TMP/e1.log" "$TMP/e2.log"; fail "no test loss"; }
    awk -v a="$l1" -v b="$l2" 'BEGIN { d = a - b; exit !(d < 2e-4 && d > -2e-4) }' ||
        fail "resumed on 2 ranks the test loss is $l2, on 1 rank $l1: rank 1 did not get rank 0's statistics"
    ok "2 ranks: identical running statistics after each of $steps steps (last hash $last = the checkpoint's); resumed test loss $l2 on 2 ranks, $l1 on 1"
    ;;
*) echo "usage: layer_state.sh state_resume_exact|state_ckpt_version1|state_broadcast_gloo"; exit 2 ;;
esac
