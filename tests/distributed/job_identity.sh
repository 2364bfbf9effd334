#!/usr/bin/env bash
# job_identity.sh CASE
#
# Ranks must agree that they run the same job, and no wait on a peer or a
# store may outlive the timeout (experiment.timeout_s = 3 here; each case
# allows 3 s + a margin for a busy 2-core machine).
#   mismatch_gloo   two ranks started by hand on one file:// rendezvous with
#                   different models (dense1 64 vs 65 units), then different
#                   seeds, then different step budgets: both exit 1 with the
#                   job fingerprint line naming the other rank
#   mismatch_mpi    the same under mpirun (MPMD: rank 1 has another model)
#   two_jobs        two jobs at once in one rendezvous folder: with their own
#                   DMNIST_JOB_ID (same config) both train; without one and
#                   with different configs, no rank trains with the other
#                   job's rank (each job's two ranks end alike)
#   silent_redis    redis:// to a listener on 127.0.0.1 that accepts and never
#                   answers: both ranks fail naming the store and the timeout
#   missing_peer    rank 1 never comes (file://): rank 0 fails with "1 of 2"
#   stalled_peer    rank 1 is stopped (SIGSTOP) once it has claimed its rank:
#                   rank 0 fails within the timeout
#   no_hostname     (root: a UTS namespace) this host's name does not resolve:
#                   dmnist-run --np 2 falls back to loopback and trains; two
#                   ranks started by hand fail naming comm.iface / comm.host
#   bench_no_host   dmnist-bench-comm --np 3 --backends gloo with a host that
#                   does not resolve, 5 times: never a crash, its own name,
#                   no doubled "gloo: gloo:"
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
case_=${1:?case}
T=3
MARGIN=5
BASE=("$CFG" "${SMALL[@]}" --set train.total_batches=8 --set train.log_every=4 --set experiment.timeout_s=$T)

# by_hand LOGPREFIX RDZV [ARGS for rank 0] -- [ARGS for rank 1]: two gloo
# ranks without a launcher; sets rc0, rc1 and secs.
by_hand() {
    local log=$1 rdzv=$2 a0=() a1=() t0
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do a0+=("$1"); shift; done
    shift
    a1=("$@")
    t0=$(date +%s.%N)
    DMNIST_RANK=0 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=$rdzv timeout -k 2 60 \
        "$RUN" "${BASE[@]}" --set experiment.backend=gloo "${a0[@]}" >"$log.0" 2>&1 &
    local p0=$!
    DMNIST_RANK=1 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=$rdzv timeout -k 2 60 \
        "$RUN" "${BASE[@]}" --set experiment.backend=gloo "${a1[@]}" >"$log.1" 2>&1 &
    local p1=$!
    wait $p0; rc0=$?
    wait $p1; rc1=$?
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
}

# refused LOG RANK OTHER: LOG holds exactly one line, the fingerprint refusal of RANK naming OTHER.
refused() {
    grep -Eq "^dmnist-run: (gloo: )?rank $2: job fingerprint [0-9a-f]{16} differs from rank $3's [0-9a-f]{16} \(different config" "$1" ||
        { show "$1"; fail "$1: no fingerprint refusal of rank $2 naming rank $3"; }
    [ "$(wc -l <"$1")" = 1 ] || { show "$1"; fail "$1: more than one line"; }
}

within() { # SECONDS LIMIT WHAT
    [ "$(echo "$1 <= $2" | bc)" = 1 ] || fail "$3 took $1 s (limit $2 s)"
}

case $case_ in
mismatch_gloo)
    n=0
    for diff in "layer.dense1.units=65" "experiment.seed=43" "train.total_batches=10"; do
        n=$((n + 1))
        by_hand "$TMP/m$n" "file://$TMP/rdzv$n" -- --set "$diff"
        [ $rc0 = 1 ] && [ $rc1 = 1 ] || { show "$TMP/m$n.0"; show "$TMP/m$n.1"; fail "$diff: exit $rc0 / $rc1, want 1 / 1"; }
        refused "$TMP/m$n.0" 0 1
        refused "$TMP/m$n.1" 1 0
        within "$secs" $MARGIN "$diff"
        ok "$diff: both ranks refused in $secs s"
    done
    ;;
mismatch_mpi)
    command -v "$MPIRUN" >/dev/null || skip "no mpirun"
    t0=$(date +%s.%N)
    timeout -k 2 60 "$MPIRUN" "${MPI_ARGS[@]}" -np 1 "$RUN" "${BASE[@]}" --set experiment.backend=mpi : \
        -np 1 "$RUN" "${BASE[@]}" --set experiment.backend=mpi --set layer.dense1.units=65 >"$TMP/mpi" 2>&1
    rc=$?
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    [ $rc != 0 ] || { show "$TMP/mpi"; fail "mpirun exited 0"; }
    grep -q "free(): \|signal\|EnforceNotMet" "$TMP/mpi" && { show "$TMP/mpi"; fail "a crash instead of a refusal"; }
    grep -E "^dmnist-run: rank [01]: job fingerprint" "$TMP/mpi" >"$TMP/lines"
    grep -q "^dmnist-run: rank 0: job fingerprint .* differs from rank 1's" "$TMP/lines" &&
        grep -q "^dmnist-run: rank 1: job fingerprint .* differs from rank 0's" "$TMP/lines" ||
        { show "$TMP/mpi"; fail "both ranks must refuse with the fingerprint line"; }
    within "$secs" 20 "mpirun" # mpirun's own start-up and tear-down
    ok "mpi: both ranks refused (mpirun exit $rc, $secs s)"
    ;;
two_jobs)
    # the same config, each job its own id: both train, side by side
    for j in a b; do
        for r in 0 1; do
            DMNIST_JOB_ID=job-$j DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=file://$TMP/shared \
                timeout -k 2 60 "$RUN" "${BASE[@]}" --set experiment.backend=gloo >"$TMP/id.$j$r" 2>&1 &
        done
    done
    for j in a b; do for r in 0 1; do
        wait -n || true
    done; done
    wait
    for j in a b; do
        grep -q "test accuracy" "$TMP/id.${j}0" || { show "$TMP/id.${j}0"; show "$TMP/id.${j}1"; fail "job $j did not train"; }
    done
    ok "two jobs with their own DMNIST_JOB_ID in one folder both trained"
    # different configs, no job id, started together (3 rounds): a rank that
    # trains must have trained with its own job's other rank
    for round in 1 2 3; do
        d="file://$TMP/shared$round"
        declare -A rc=()
        pids=()
        for j in a b; do
            units=64
            [ $j = b ] && units=65
            for r in 0 1; do
                DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=$d timeout -k 2 60 "$RUN" "${BASE[@]}" \
                    --set experiment.backend=gloo --set layer.dense1.units=$units >"$TMP/x$round.$j$r" 2>&1 &
                pids+=("$!:$j$r")
            done
        done
        for pr in "${pids[@]}"; do
            wait "${pr%%:*}"
            rc[${pr#*:}]=$?
        done
        for j in a b; do
            if [ "${rc[${j}0]}" = 0 ] || [ "${rc[${j}1]}" = 0 ]; then
                [ "${rc[${j}0]}" = 0 ] && [ "${rc[${j}1]}" = 0 ] ||
                    { for f in "$TMP"/x$round.*; do echo "$f"; show "$f"; done; fail "round $round: one rank of job $j trained without its partner"; }
            fi
        done
        for f in "$TMP"/x$round.*; do
            grep -q "signal\|EnforceNotMet\|free()" "$f" && { show "$f"; fail "$f: a crash"; }
        done
        echo "  round $round: exits a0=${rc[a0]} a1=${rc[a1]} b0=${rc[b0]} b1=${rc[b1]}"
        unset rc
    done
    ok "two jobs without an id in one folder never trained together"
    ;;
silent_redis)
    python3 - >"$TMP/port" <<'EOF' &
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
conns = []
while True:  # accept, never answer
    conns.append(s.accept()[0])
EOF
    srv=$!
    on_exit "kill $srv"
    for _ in $(seq 100); do [ -s "$TMP/port" ] && break; sleep 0.05; done
    port=$(cat "$TMP/port")
    [ -n "$port" ] || fail "the silent server did not start"
    by_hand "$TMP/r" "redis://127.0.0.1:$port" --
    for r in 0 1; do
        [ "$(eval echo \$rc$r)" = 1 ] || { show "$TMP/r.$r"; fail "rank $r: exit $(eval echo \$rc$r), want 1"; }
        grep -q "^dmnist-run: gloo: rank $r: rendezvous redis://127.0.0.1:$port: redis did not answer within $T s (comm.timeout_s" "$TMP/r.$r" ||
            { show "$TMP/r.$r"; fail "rank $r: no line naming the store and the timeout"; }
    done
    within "$secs" $((T + MARGIN)) "silent redis"
    ok "silent redis: both ranks failed in $secs s"
    ;;
missing_peer)
    t0=$(date +%s.%N)
    DMNIST_RANK=0 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=file://$TMP/lonely timeout -k 2 60 \
        "$RUN" "${BASE[@]}" --set experiment.backend=gloo >"$TMP/lonely.log" 2>&1
    rc=$?
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    [ $rc != 0 ] && grep -q "1 of 2 ranks arrived (missing rank 1)" "$TMP/lonely.log" || { show "$TMP/lonely.log"; fail "exit $rc"; }
    within "$secs" $((T + MARGIN)) "missing peer"
    ok "missing peer: $secs s"
    ;;
stalled_peer)
    d=$TMP/stall
    mkdir -p "$d"
    DMNIST_RANK=1 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=file://$d timeout -k 2 60 \
        "$RUN" "${BASE[@]}" --set experiment.backend=gloo >"$TMP/st.1" 2>&1 &
    p1=$!
    on_exit "kill -CONT $p1 2>/dev/null; kill -KILL $p1 2>/dev/null"
    for _ in $(seq 500); do compgen -G "$d/dm.*claim*1" >/dev/null && break; sleep 0.01; done
    victim=$(pgrep -P $p1 -x dmnist-run || echo $p1)
    kill -STOP "$victim"
    t0=$(date +%s.%N)
    DMNIST_RANK=0 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=file://$d timeout -k 2 60 \
        "$RUN" "${BASE[@]}" --set experiment.backend=gloo >"$TMP/st.0" 2>&1
    rc=$?
    secs=$(echo "$(date +%s.%N) - $t0" | bc)
    kill -KILL "$victim" 2>/dev/null
    [ $rc != 0 ] && grep -q "^dmnist-run: gloo: rank 0: .*\(timed out\|Timed out\|did not\)" "$TMP/st.0" ||
        { show "$TMP/st.0"; fail "rank 0: exit $rc"; }
    [ "$(wc -l <"$TMP/st.0")" = 1 ] || { show "$TMP/st.0"; fail "more than one line"; }
    within "$secs" $((T + MARGIN)) "stalled peer"
    ok "stalled peer: rank 0 failed in $secs s: $(cat "$TMP/st.0")"
    ;;
no_hostname)
    [ "$(id -u)" = 0 ] && unshare --uts true 2>/dev/null || skip "needs root and unshare --uts"
    unshare --uts bash -c "hostname no-such-host-xyz.invalid && \"$RUN\" --np 2 ${BASE[*]@Q} --set experiment.backend=gloo" \
        >"$TMP/np" 2>&1 || { show "$TMP/np"; fail "--np 2 on a host whose name does not resolve"; }
    grep -q "test accuracy" "$TMP/np" || { show "$TMP/np"; fail "no training"; }
    ok "--np 2 fell back to loopback"
    for r in 0 1; do
        unshare --uts bash -c "hostname no-such-host-xyz.invalid && DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 \
            DMNIST_RENDEZVOUS=file://$TMP/nh timeout 60 \"$RUN\" ${BASE[*]@Q} --set experiment.backend=gloo" \
            >"$TMP/nh.$r" 2>&1 &
    done
    wait
    for r in 0 1; do
        grep -q "^dmnist-run: gloo: rank $r: this host's name 'no-such-host-xyz.invalid' does not resolve.*set comm.iface.*or comm.host" \
            "$TMP/nh.$r" || { show "$TMP/nh.$r"; fail "rank $r by hand: no line naming the keys"; }
    done
    ok "by hand: $(cat "$TMP/nh.0")"
    ;;
bench_no_host)
    BENCH=$(dirname "$RUN")/dmnist-bench-comm
    [ -x "$BENCH" ] || skip "no dmnist-bench-comm next to dmnist-run"
    for i in 1 2 3 4 5; do
        timeout -k 2 60 "$BENCH" --np 3 --backends gloo --set comm.host=no-such-host.invalid \
            --set experiment.timeout_s=$T "$CFG" >"$TMP/b$i" 2>&1
        rc=$?
        [ $rc = 1 ] || { show "$TMP/b$i"; fail "run $i: exit $rc, want 1"; }
        grep -q "signal\|Segmentation" "$TMP/b$i" && { show "$TMP/b$i"; fail "run $i: a crash"; }
        grep -q "gloo: gloo:" "$TMP/b$i" && { show "$TMP/b$i"; fail "run $i: doubled 'gloo: gloo:'"; }
        grep -q "dmnist-run" "$TMP/b$i" && { show "$TMP/b$i"; fail "run $i: labelled dmnist-run"; }
        grep -q "dmnist-bench-comm: gloo: rank [0-2]: comm.host 'no-such-host.invalid' does not resolve" "$TMP/b$i" ||
            { show "$TMP/b$i"; fail "run $i: no line naming the host"; }
    done
    ok "5 runs, no crash: $(grep -m1 'rank 0: comm.host' "$TMP/b1")"
    ;;
*) fail "unknown case $case_" ;;
esac
