#!/usr/bin/env bash
# Failures end the job, within the timeout, saying where.
#
#   nan_stop        a NaN loss (the test dataset "poison" puts a NaN pixel in
#                   one example) stops the run with exit 1 naming the step;
#                   the checkpoints written before it stop one step short
#   nan_skip        train.nan_policy = skip skips exactly that step and the
#                   run finishes with finite parameters and test loss
#   nan_hidden      a NaN pixel that a ReLU layer hides from the loss but not
#                   from the gradients: stop catches it before the next
#                   checkpoint (or at the end), skip checks the gradients and
#                   skips that step, restoring the layer state (batchnorm) it
#                   changed
#   inf_skip_gloo   2 ranks, an Inf on one of them: both skip the same step
#                   (no NaN gradients reach either), and with = stop both stop
#   rank_dies_gloo  SIGKILL one rank of a 2-rank gloo run: with the --np
#                   launcher, and with ranks started by hand (as on two hosts),
#                   the job ends within the timeout naming the rank or peer
#   rank_dies_mpi   the same under mpirun (dmnist-run --np with backend mpi)
#   link_cut_netns  two network namespaces joined by a veth pair, one rank in
#                   each, Gloo over TCP; `ip link set ... down` mid-run: both
#                   ranks end within the timeout (skipped where netns is not
#                   permitted)
source "$(dirname "$0")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini

# One epoch of 512 examples (32 global batches of 16) draws the poisoned one
# exactly once. An Inf pixel, because ReLU turns a NaN pixel into 0; the Inf
# becomes a NaN loss in the dense layer.
poison=(--plugin-path "${DMNIST_TEST_PLUGINS:?}" --set data.type=poison --set data.train_size=512
        --set data.test_size=64 --set data.poison_index=300 --set data.poison=inf)

# wait_for FILE PATTERN SECONDS PID...: until a line matches; fail after
# SECONDS, or at once when one of the PIDs (writing FILE) has exited.
wait_for() {
    wait_for_line "$@" && return 0
    fail "no line matching '$2' in $1"
}

# wait_exit PID SECONDS: true when PID exits within SECONDS.
wait_exit() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# kill_rank1 PID ENTRY WHAT: kill -KILL rank 1 of the job PID runs (the
# process whose environment holds $tag and ENTRY); WHAT (the job, mpirun)
# must then exit non-zero within 15 s (the timeout is 10 s). Sets start
# (when rank 1 died) and rc (its status).
kill_rank1() {
    local victim
    victim=$(pids_with_env "$tag" "$2")
    [ -n "$victim" ] || fail "cannot find rank 1's process"
    start=$SECONDS
    kill -KILL $victim
    wait_exit "$1" 15 || fail "$3 still runs 15 s after rank 1 died (timeout 10 s)"
    wait "$1"
    rc=$?
    [ $rc != 0 ] || fail "$3 exited 0 although rank 1 died"
}

case ${1:-} in
nan_stop)
    run_ok "$TMP/clean.log" "$RUN" "${poison[@]}" --set data.poison_index=-1 "$CFG" 32
    run_fails "$TMP/stop.log" 1 "$RUN" "${poison[@]}" --set train.checkpoint_dir="$TMP/ck" --set train.checkpoint_every=1 "$CFG" 32
    line=$(grep '^dmnist-run: ' "$TMP/stop.log")
    [[ $line =~ ^dmnist-run:\ step\ ([0-9]+):\ loss\ is\ (-?nan|-?inf)[^\ ]*\ on\ rank\ 0:\ training\ diverged ]] ||
        { cat "$TMP/stop.log"; fail "the message does not name the step: $line"; }
    step=${BASH_REMATCH[1]}
    # The run wrote a checkpoint after every good step: the last is the step before.
    last=$(field "$("$TOOL" latest "$TMP/ck")" step)
    [ "$last" = $((step - 1)) ] || fail "message names step $step but the last good checkpoint is step $last"
    [ "$(field "$("$TOOL" latest "$TMP/ck")" nonfinite)" = 0 ] || fail "the last checkpoint holds NaN/Inf"
    ok "$line"
    ;;
nan_skip)
    run_fails "$TMP/stop.log" 1 "$RUN" "${poison[@]}" "$CFG" 32
    step=$(sed -n 's/^dmnist-run: step \([0-9]*\): .*/\1/p' "$TMP/stop.log")
    [ -n "$step" ] || { cat "$TMP/stop.log"; fail "no step in the stop message"; }
    run_ok "$TMP/skip.log" "$RUN" "${poison[@]}" --set train.nan_policy=skip --set train.checkpoint_dir="$TMP/ck" "$CFG" 32
    skipped=$(grep -c 'step skipped (nan_policy = skip)' "$TMP/skip.log")
    [ "$skipped" = 1 ] || { cat "$TMP/skip.log"; fail "$skipped steps skipped, expected 1"; }
    grep -q "^step $step: loss is .* on rank 0, step skipped" "$TMP/skip.log" ||
        { cat "$TMP/skip.log"; fail "the skipped step is not step $step"; }
    grep -Eq '^test loss [0-9]+\.[0-9]+ ' "$TMP/skip.log" || { cat "$TMP/skip.log"; fail "test loss not finite"; }
    f=$(ckpt "$TMP/ck" 32)
    expect_field "$f" nonfinite 0
    expect_field "$f" step 32
    ok "step $step skipped, 31 applied, parameters finite: $(grep '^test loss' "$TMP/skip.log")"
    ;;
inf_skip_gloo)
    has_plugin gloo || skip "no gloo backend plugin"
    gloo=(--np 2 --set experiment.backend=gloo --set experiment.timeout_s=20)
    run_ok "$TMP/skip.log" "$RUN" "${gloo[@]}" "${poison[@]}" --set train.nan_policy=skip --set train.checkpoint_dir="$TMP/ck" "$CFG" 32
    n=$(grep -c 'step skipped' "$TMP/skip.log")
    [ "$n" = 1 ] || { cat "$TMP/skip.log"; fail "rank 0 reported $n skipped steps, expected 1"; }
    expect_field "$(ckpt "$TMP/ck" 16)" nonfinite 0
    grep -Eq '^\[rank 0\] test loss [0-9]+\.[0-9]+ ' "$TMP/skip.log" || { cat "$TMP/skip.log"; fail "test loss not finite"; }
    # stop: ranks started by hand (no launcher to stop the other): both must
    # stop at the same step, each saying so
    mkdir "$TMP/rdzv"
    for r in 0 1; do
        DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" timeout -k 5 30 "$RUN" \
            "${gloo[@]:2}" "${poison[@]}" "$CFG" 32 >"$TMP/stop$r.log" 2>&1 &
        eval "p$r=\$!"
    done
    for r in 0 1; do
        eval "p=\$p$r"
        wait "$p"
        rc=$?
        [ $rc = 1 ] || { cat "$TMP/stop$r.log"; fail "rank $r exited with $rc, expected 1"; }
        grep -Eq "^dmnist-run: step [0-9]+: loss (is .* on rank $r|is not finite on 1 other rank): training diverged" \
            "$TMP/stop$r.log" || { cat "$TMP/stop$r.log"; fail "rank $r did not stop at the step"; }
    done
    s0=$(sed -n 's/^dmnist-run: step \([0-9]*\):.*/\1/p' "$TMP/stop0.log")
    s1=$(sed -n 's/^dmnist-run: step \([0-9]*\):.*/\1/p' "$TMP/stop1.log")
    [ "$s0" = "$s1" ] || fail "rank 0 stopped at step $s0, rank 1 at step $s1"
    ok "$(grep 'step skipped' "$TMP/skip.log"); with stop both ranks stopped at step $s0"
    ;;
nan_hidden)
    # A NaN pixel in a model whose ReLU is a layer of its own (batchnorm.ini:
    # conv, batchnorm, relu, ...): the ReLU layer turns the NaN channel into
    # 0, so every loss stays finite, but the gradients below it are NaN. (A
    # fused activation keeps NaN, as PyTorch's relu does; the relu layer maps
    # it to 0 on both devices.) The step is the one the Inf pixel names.
    run_fails "$TMP/inf.log" 1 "$RUN" "${poison[@]}" "$CFG" 32
    step=$(sed -n 's/^dmnist-run: step \([0-9]*\): .*/\1/p' "$TMP/inf.log")
    [ -n "$step" ] || { cat "$TMP/inf.log"; fail "no step in the Inf run's stop message"; }
    hidden=("${poison[@]}" --plugin-path "$DMNIST_TEST_PLUGINS:${DMNIST_TEST_BATCHNORM:?}" --set data.poison=nan)
    BN=$SRC/tests/robustness/batchnorm.ini
    # stop: caught before the checkpoint of that step is written
    run_fails "$TMP/stop.log" 1 "$RUN" "${hidden[@]}" --set train.checkpoint_dir="$TMP/ck" --set train.checkpoint_every=1 "$BN" 32
    grep -q "^dmnist-run: step $step: parameters are not finite (NaN or Inf) though the loss is: training diverged" \
        "$TMP/stop.log" || { cat "$TMP/stop.log"; fail "stop does not name step $step and the parameters"; }
    last=$(field "$("$TOOL" latest "$TMP/ck")" step)
    [ "$last" = $((step - 1)) ] || fail "newest checkpoint is step $last, expected $((step - 1))"
    [ "$(field "$("$TOOL" latest "$TMP/ck")" nonfinite)" = 0 ] || fail "the newest checkpoint holds NaN/Inf"
    # stop without checkpoints: caught at the end, before the final checkpoint and evaluation
    run_fails "$TMP/stop-end.log" 1 "$RUN" "${hidden[@]}" --set train.checkpoint_dir="$TMP/ck-end" "$BN" 32
    grep -q "^dmnist-run: steps 1-32: parameters are not finite" "$TMP/stop-end.log" ||
        { cat "$TMP/stop-end.log"; fail "the end-of-run check did not stop the run"; }
    [ -z "$(ls "$TMP/ck-end" 2>/dev/null)" ] || fail "a checkpoint was written with NaN parameters"
    grep -q '^test loss' "$TMP/stop-end.log" && fail "a diverged run reported a test loss"
    # skip: the gradients are checked, exactly that step is skipped, and the
    # running statistics its forward pass wrote NaN into are put back
    run_ok "$TMP/skip.log" "$RUN" "${hidden[@]}" --set train.nan_policy=skip --set train.checkpoint_dir="$TMP/ck-skip" "$BN" 32
    [ "$(grep -c 'step skipped' "$TMP/skip.log")" = 1 ] || { cat "$TMP/skip.log"; fail "expected 1 skipped step"; }
    grep -q "^step $step: loss is finite but the gradients are not (NaN or Inf), step skipped" "$TMP/skip.log" ||
        { cat "$TMP/skip.log"; fail "the skipped step is not step $step"; }
    f=$(ckpt "$TMP/ck-skip" 32)
    expect_field "$f" nonfinite 0
    [ "$(field "$f" n_state)" -gt 0 ] || fail "the batchnorm run has no layer state"
    grep -Eq '^test loss [0-9]+\.[0-9]+ ' "$TMP/skip.log" || { cat "$TMP/skip.log"; fail "test loss not finite"; }
    ok "step $step: stop names it (and the end-of-run check stops a run without checkpoints), skip skips it, layer state restored"
    ;;
rank_dies_gloo)
    has_plugin gloo || skip "no gloo backend plugin"
    args=(--set experiment.backend=gloo --set experiment.timeout_s=10 --set train.log_every=50 "$CFG" 100000000)
    tag="DMNIST_TEST_TAG=$TMP"
    # 1) through the --np launcher
    env "$tag" "$RUN" --np 2 "${args[@]}" >"$TMP/np.log" 2>&1 &
    pid=$!
    on_exit "kill -KILL $pid 2>/dev/null"
    wait_for "$TMP/np.log" '^\[rank 0\] step +50/' 30 $pid
    kill_rank1 $pid DMNIST_RANK=1 "the job"
    grep -q 'rank 1 was killed by signal 9' "$TMP/np.log" || { cat "$TMP/np.log"; fail "the launcher did not name rank 1"; }
    echo "launcher: exit $rc after $((SECONDS - start)) s: $(grep 'rank 1 was killed' "$TMP/np.log")"
    # 2) ranks started by hand, no launcher to notice: rank 0's collective must fail
    mkdir "$TMP/rdzv"
    for r in 0 1; do
        DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" "$RUN" "${args[@]}" >"$TMP/h$r.log" 2>&1 &
        eval "p$r=\$!"
        on_exit "kill -KILL $! 2>/dev/null"
    done
    wait_for "$TMP/h0.log" '^step +50/' 30 "$p0" "$p1"
    start=$SECONDS
    kill -KILL "$p1"
    wait_exit "$p0" 15 || fail "rank 0 still runs 15 s after rank 1 died (timeout 10 s)"
    wait "$p0"
    rc=$?
    [ $rc = 1 ] || { cat "$TMP/h0.log"; fail "rank 0 exited with $rc, expected 1"; }
    msg=$(grep '^dmnist-run: ' "$TMP/h0.log")
    [[ $msg =~ (peer|rank\ 1) ]] || fail "rank 0's message names neither the peer nor rank 1: $msg"
    ok "by hand: rank 0 exit $rc after $((SECONDS - start)) s: $msg"
    ;;
rank_dies_mpi)
    has_plugin mpi || skip "no mpi backend plugin"
    command -v mpirun >/dev/null || skip "no mpirun"
    export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
    tag="DMNIST_TEST_TAG=$TMP"
    env "$tag" "$RUN" --np 2 --set experiment.backend=mpi --set experiment.timeout_s=10 --set train.log_every=50 \
        "$CFG" 100000000 >"$TMP/mpi.log" 2>&1 &
    pid=$!
    on_exit "kill -KILL $pid 2>/dev/null"
    wait_for "$TMP/mpi.log" 'step +50/' 60 $pid
    kill_rank1 $pid OMPI_COMM_WORLD_RANK=1 mpirun
    grep -Eq 'rank 1 .*(exited on signal 9|Killed)|rank 1: .*(peer|gone)' "$TMP/mpi.log" ||
        { cat "$TMP/mpi.log"; fail "nothing names rank 1"; }
    ok "mpirun: exit $rc after $((SECONDS - start)) s: $(grep -Em1 'rank 1 ' "$TMP/mpi.log")"
    ;;
link_cut_netns)
    has_plugin gloo || skip "no gloo backend plugin"
    command -v ip >/dev/null || skip "no ip (iproute2)"
    id=$$
    a=dmA$id b=dmB$id va=dmva$id vb=dmvb$id
    a=${a:0:15} b=${b:0:15} va=${va:0:15} vb=${vb:0:15}
    ip netns add "$a" 2>"$TMP/netns.err" || skip "network namespaces not permitted here: $(cat "$TMP/netns.err")"
    on_exit "ip netns del $a 2>/dev/null"
    ip netns add "$b" || fail "ip netns add $b"
    on_exit "ip netns del $b 2>/dev/null"
    ip link add "$va" type veth peer name "$vb" 2>"$TMP/veth.err" || skip "veth pairs not permitted here: $(cat "$TMP/veth.err")"
    net=10.$((200 + id % 50)).$((id / 50 % 250)).
    ip link set "$va" netns "$a" && ip link set "$vb" netns "$b" &&
        ip -n "$a" addr add ${net}1/24 dev "$va" && ip -n "$b" addr add ${net}2/24 dev "$vb" &&
        ip -n "$a" link set "$va" up && ip -n "$b" link set "$vb" up &&
        ip -n "$a" link set lo up && ip -n "$b" link set lo up || fail "cannot set up the veth pair"
    mkdir "$TMP/rdzv"
    timeout_s=5
    for r in 0 1; do
        ns=$a
        [ $r = 1 ] && ns=$b
        ip netns exec "$ns" env DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" \
            "$RUN" --set experiment.backend=gloo --set comm.host=${net}$((r + 1)) --set experiment.timeout_s=$timeout_s \
            --set train.log_every=50 "$CFG" 100000000 >"$TMP/n$r.log" 2>&1 &
        eval "p$r=\$!"
        on_exit "kill -KILL $! 2>/dev/null"
    done
    wait_for "$TMP/n0.log" '^step +100/' 30 "$p0" "$p1"
    # the ranks really talk over the veth pair
    ip netns exec "$a" ss -tnH | grep -q "${net}1:[0-9]* *${net}2:" || fail "no TCP connection between ${net}1 and ${net}2"
    start=$SECONDS
    ip -n "$a" link set "$va" down
    for r in 0 1; do
        eval "p=\$p$r"
        wait_exit "$p" $((timeout_s + 10)) || fail "rank $r still runs $((timeout_s + 10)) s after the link was cut (timeout $timeout_s s)"
        wait "$p"
        rc=$?
        [ $rc = 1 ] || { cat "$TMP/n$r.log"; fail "rank $r exited with $rc, expected 1"; }
        msg=$(grep '^dmnist-run: ' "$TMP/n$r.log")
        [[ $msg =~ (timed\ out|peer|rank\ [01]) ]] || fail "rank $r: the message says nothing about the lost peer: $msg"
        echo "rank $r: exit $rc after $((SECONDS - start)) s: $msg"
    done
    ok "link cut: both ranks ended within $((SECONDS - start)) s (timeout $timeout_s s)"
    ;;
*) echo "usage: failures.sh nan_stop|nan_skip|inf_skip_gloo|rank_dies_gloo|rank_dies_mpi|link_cut_netns"; exit 2 ;;
esac
