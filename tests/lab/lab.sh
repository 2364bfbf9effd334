#!/usr/bin/env bash
# lab.sh CASE: the fault lab, scripts/lab (docs/fault-lab.md).
#
#   updown              lab up with 4 hosts, then down (twice: idempotent): no
#                       namespace, process or state folder of the lab is left.
#   shaping             2 hosts, 20 ms delay each: ping -U takes 2 x 20 ms (a
#                       packet between two hosts sees the delay of the one it
#                       reaches, the reply the other's), within +10 ms; with 30%
#                       loss on h1, 12 to 50% of 60 pings are lost (3 sigma); after
#                       `shape` to 100 Mbit/s and 1 ms, 12.5 MB take about 1 s
#                       (0.8 to 1.6 s: TCP's slow start and the machine's load).
#   job_gloo, job_mpi   4 ranks on 4 hosts (1 Gbit/s, 2 ms) finish, and their final
#                       parameter hash equals that of dmnist-run --np 4 on loopback
#                       with the same backend (gloo and Open MPI sum 4 ranks in
#                       different orders: their hashes differ from each other).
#   fault_kill_gloo     @step=20 kill rank=2: the job ends within experiment.timeout_s
#   fault_kill_mpi      (6 s) of the fault; the lab exits 1, rank 2 is reported as
#                       killed on purpose, every other rank ended non-zero (today
#                       dmnist ends the whole job: a gloo survivor exits 1 naming
#                       the peer whose connection broke, "... (rank 2)"; mpirun
#                       ends the others), and faults.log records the kill.
#   fault_stop_gloo     @step=20 stop rank=1: the others time out after 6 s and exit
#                       1 ("timed out after 6 s"); the lab then kills the stopped
#                       rank: the job ends within 6 + 4 s of the fault.
#   fault_linkdown_gloo @step=20 linkdown host=3: every rank times out (6 s) and exits
#                       1, within 6 + 4 s; after the job the link is up again.
#   fault_revive_gloo   @step=20 killhost host=2, then revive host=2: the lab restarts
#                       rank 2's command (same argv and environment) with its log
#                       in rank2.1.log, and the summary reports that process.
#   elastic_faults_gloo experiment.elastic on 4 hosts (1 Gbit/s, 2 ms), one epoch of
#                       real MNIST (the small model; skipped without it): rank 2 killed
#                       at a random step, rank 1 frozen 40 steps later. The job
#                       finishes its budget (within a world size of it), each world
#                       change starts at or after the step its fault hit (at most the
#                       step in flight is lost), and the test accuracy is within 0.3
#                       points of an uninterrupted run. Prints fault -> next step.
#   elastic_linkcut_gloo  h3's link down from 4 s to 10 s: the world re-forms (the cut
#                       rank waits to rejoin) and the job trains its budget.
#   elastic_revive_gloo killhost host=2 at step 20, revive at step 60: 4 -> 3 -> 4
#                       ranks, and the job ends with 4.
#   agents_gloo         per-host agents: dmnist-run --np 2 --nodes 2 --node-rank I on h0
#                       and h1 (elastic, --max-restarts 1); every process of h1 killed
#                       (agent included): 4 -> 2 ranks; h1's agent started again: its
#                       ranks join and the job ends with 4.
#   restart_mpi         mpi has no in-process recovery: rank 2 killed at step 22 ends the
#                       job (checkpoints every 5 steps); the same job again with --resume
#                       (what dmnist-run --max-restarts does) finishes, and its final
#                       checkpoint equals an uninterrupted run's bit for bit.
# Every case brings its own lab (named after this shell's PID) down on exit,
# whatever happened. Skipped (77) when not root, without ip, tc or iptables,
# or where network namespaces cannot be made.
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
case=${1:?case}
LAB=$SRC/scripts/lab
NAME=t$$
[ "$(id -u)" = 0 ] || skip "not root: the lab needs network namespaces"
command -v ip >/dev/null || skip "no ip command (Debian package iproute2)"
command -v tc >/dev/null || [ -x /usr/sbin/tc ] || skip "no tc command (Debian package iproute2)"
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || skip "no iptables (Debian package iptables): the lab's delay and loss need it"
on_exit "'$LAB' down $NAME >/dev/null 2>&1"

# up ARGS...: lab up, skipping where namespaces cannot be made.
up() {
    "$LAB" up $NAME "$@" >"$TMP/up.log" 2>&1
    local rc=$?
    [ $rc = 77 ] && { cat "$TMP/up.log"; skip "the lab cannot be made here"; }
    [ $rc = 0 ] || { show "$TMP/up.log"; fail "lab up $* exited with status $rc"; }
}

# leftovers: whatever of the lab still exists (namespaces, folder, processes).
leftovers() {
    ip netns list | grep -E "^dmlab-$NAME-" | sed 's/^/namespace /'
    [ -e /tmp/dmnist-lab-$NAME ] && echo "folder /tmp/dmnist-lab-$NAME"
    pgrep -af "dmnist-lab-$NAME/" | sed 's/^/process /'
}

# job ARGS...: scripts/lab job with the small model; sets rc, took (s), log.
ARGS=("$CFG" "${SMALL[@]}" --set train.log_every=10 --set experiment.timeout_s=6)
job() {
    local t0
    t0=$(now_ms)
    "$LAB" job $NAME --logdir "$TMP/job" "$@" >"$TMP/lab.log" 2>&1
    rc=$? took=$(since_s "$t0") log=$TMP/lab.log
}

# fault_time: seconds after the job started at which faults.log says the fault fired.
fault_time() { sed -n '1s/^+\([0-9.]*\)s .*/\1/p' "$TMP/job/faults.log"; }
# job_end: the job's length by summary.json.
job_end() { sed -n 's/.*"seconds": \([0-9.]*\).*/\1/p' "$TMP/job/summary.json"; }
within() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# fault_case BACKEND SCHEDULE BOUND: the job with one fault at step 20 must end
# with status 1 at most BOUND seconds after the fault.
fault_case() {
    job --np 4 --backend "$1" --timeout 50 --faults "$2" -- "${ARGS[@]}" --set train.total_batches=1000000
    [ $rc = 1 ] || { show "$log"; fail "lab job exited with status $rc, not 1 (a rank failed)"; }
    grep -q "$2" "$TMP/job/faults.log" || { show "$log"; fail "faults.log does not record '$2'"; }
    ft=$(fault_time) end=$(job_end)
    [ -n "$ft" ] && [ -n "$end" ] || { show "$log"; fail "no fault time or job length"; }
    after=$(awk -v a="$ft" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    within "$after" "$3" || { show "$log"; fail "the job ended $after s after the fault, more than $3 s"; }
}

case $case in
updown)
    links0=$(ip -br link | awk '{ print $1 }' | sort)
    up --hosts 4 --rate 1gbit --delay 5ms --loss 0.1%
    [ "$(ip netns list | grep -cE "^dmlab-$NAME-")" = 5 ] || fail "expected 5 namespaces (4 hosts and the switch)"
    [ "$(pgrep -cf "dmnist-lab-$NAME/link")" = 4 ] || fail "expected 4 link daemons"
    "$LAB" exec $NAME h3 -- ip -br addr show eth0 | grep -q "10.77.0.4/24" || fail "h3 has no address 10.77.0.4"
    "$LAB" down $NAME >"$TMP/down.log" 2>&1 || { show "$TMP/down.log"; fail "lab down failed"; }
    left=$(leftovers)
    [ -z "$left" ] || fail "left behind by lab down: $left"
    [ "$(ip -br link | awk '{ print $1 }' | sort)" = "$links0" ] || fail "the host's links changed: $(ip -br link)"
    "$LAB" down $NAME >"$TMP/down.log" 2>&1 || { show "$TMP/down.log"; fail "a second lab down failed"; }
    ok "lab up (4 hosts) and down left nothing; down again: $(cat "$TMP/down.log")"
    ;;
shaping)
    command -v ping >/dev/null || skip "no ping (Debian package iputils-ping)"
    up --hosts 2 --delay 20ms
    # -U: user-to-user time (the kernel's receive timestamp is taken before the delay).
    rtt=$("$LAB" exec $NAME h0 -- ping -U -c 5 -i 0.2 10.77.0.2 | sed -n 's|.*= \([0-9.]*\)/.*|\1|p')
    [ -n "$rtt" ] || fail "no ping from h0 to h1"
    within 40 "$rtt" && within "$rtt" 50 || fail "ping RTT $rtt ms with 20 ms each way, expected 40 to 50"
    # 30% loss on h1: each echo request to it is lost with p = 0.3 (h0's replies see h0's 0%).
    "$LAB" shape $NAME h1 --delay 0 --loss 30% >/dev/null || fail "lab shape --loss"
    lost=$("$LAB" exec $NAME h0 -- ping -c 60 -i 0.02 -W 1 10.77.0.2 | sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p')
    [ -n "$lost" ] && within 12 "$lost" && within "$lost" 50 || fail "loss 30%: ping lost ${lost:-?}% of 60, expected 12 to 50"
    "$LAB" shape $NAME h1 --rate 100mbit --delay 1ms --loss 0 >/dev/null && "$LAB" shape $NAME h0 --rate 100mbit --delay 1ms >/dev/null ||
        fail "lab shape"
    cat >"$TMP/xfer.py" <<'EOF'
import socket, sys, time
if sys.argv[1] == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.77.0.2", 5555)); s.listen(1); c, _ = s.accept()
    while c.recv(1 << 20): pass
    c.sendall(b"k")
else:
    n = int(sys.argv[2]); s = socket.create_connection(("10.77.0.2", 5555)); t = time.time()
    s.sendall(b"\0" * n); s.shutdown(socket.SHUT_WR); s.recv(1)
    print("%.3f" % (time.time() - t))
EOF
    "$LAB" exec $NAME h1 -- timeout 20 python3 "$TMP/xfer.py" recv &
    on_exit "kill $! 2>/dev/null"
    sleep 0.5
    secs=$("$LAB" exec $NAME h0 -- timeout 20 python3 "$TMP/xfer.py" send 12500000)
    [ -n "$secs" ] || fail "the transfer from h0 to h1 failed"
    within 0.8 "$secs" && within "$secs" 1.6 || fail "12.5 MB at 100 Mbit/s took $secs s, expected 0.8 to 1.6 (1.0)"
    ok "ping RTT $rtt ms for 2 x 20 ms; $lost% of pings lost at 30% loss; 12.5 MB at 100 Mbit/s in $secs s"
    ;;
job_gloo | job_mpi)
    be=${case#job_}
    [ $be = mpi ] && ! command -v "$MPIRUN" >/dev/null && skip "no mpirun"
    up --hosts 4 --rate 1gbit --delay 2ms
    STEPS=20
    a=("${ARGS[@]}" --set train.total_batches=$((4 * STEPS)) --set train.sync_check_every=$STEPS)
    run_ok "$TMP/ref.log" "$RUN" --np 4 "${a[@]}" --set experiment.backend=$be
    hash_of() { sed -n "s/.*sync-check step $STEPS: parameter hash \([0-9a-f]*\) on all 4 ranks.*/\1/p" "$1"; }
    want=$(hash_of "$TMP/ref.log")
    [ -n "$want" ] || { show "$TMP/ref.log"; fail "no sync-check hash on loopback"; }
    job --np 4 --backend $be --timeout 50 -- "${a[@]}"
    [ $rc = 0 ] || { show "$log"; show "$TMP/job/rank0.log"; fail "the lab job exited with status $rc"; }
    got=$(hash_of "$TMP/job/rank0.log")
    [ "$got" = "$want" ] || { show "$TMP/job/rank0.log"; fail "final hash $got across the lab, $want on loopback"; }
    ok "$be: 4 ranks on 4 lab hosts in $took s, final hash $got as on loopback"
    ;;
fault_kill_gloo | fault_kill_mpi)
    be=${case#fault_kill_}
    [ $be = mpi ] && ! command -v "$MPIRUN" >/dev/null && skip "no mpirun"
    up --hosts 4
    fault_case $be "@step=20 kill rank=2" 6
    grep -q "rank 2 on h2 (10.77.0.3): killed by SIGKILL (deliberate" "$log" || { show "$log"; fail "rank 2 not reported as killed on purpose"; }
    for r in 0 1 3; do
        grep -qE "rank $r on h$r .*: (exit [1-9]|no exit status)" "$log" || { show "$log"; fail "rank $r did not end non-zero"; }
    done
    msg=
    if [ $be = gloo ]; then
        msg=$(grep -h -m1 "failed: .*(rank 2)" "$TMP"/job/rank[013].log | head -1)
        [ -n "$msg" ] || { tail -n 3 "$TMP"/job/rank*.log; fail "no survivor names the lost rank 2"; }
    fi
    ok "$be: kill rank=2 at step 20 (+$ft s) ended the job $after s later${msg:+: $msg}"
    ;;
fault_stop_gloo)
    up --hosts 4
    fault_case gloo "@step=20 stop rank=1" 10
    grep -q "rank 1 on h1 .*deliberate: left stopped" "$log" || { show "$log"; fail "rank 1 not reported as left stopped and killed"; }
    for r in 0 2 3; do
        grep -q "timed out after 6 s" "$TMP/job/rank$r.log" || { show "$TMP/job/rank$r.log"; fail "rank $r did not time out"; }
    done
    ok "stop rank=1 at step 20 (+$ft s): the others timed out, the job ended $after s later"
    ;;
fault_linkdown_gloo)
    up --hosts 4
    fault_case gloo "@step=20 linkdown host=3" 10
    for r in 0 1 2 3; do
        grep -q "timed out after 6 s" "$TMP/job/rank$r.log" || { show "$TMP/job/rank$r.log"; fail "rank $r did not time out"; }
    done
    ip -n dmlab-$NAME-sw -br link show port3 | grep -q UP || fail "port3 still down after the job"
    ok "linkdown host=3 at step 20 (+$ft s): every rank timed out, the job ended $after s later, the link is up again"
    ;;
fault_revive_gloo)
    up --hosts 4
    job --np 4 --backend gloo --timeout 50 --faults "@step=20 killhost host=2; @step=20 revive host=2" \
        -- "${ARGS[@]}" --set train.total_batches=1000000
    grep -q "killhost host=2 .*SIGKILL to" "$TMP/job/faults.log" && grep -q "revive host=2 .*restarted rank 2" "$TMP/job/faults.log" ||
        { show "$log"; fail "faults.log lacks the killhost and the revive"; }
    [ -s "$TMP/job/rank2.1.log" ] || { show "$log"; fail "no log of the revived rank 2 (rank2.1.log)"; }
    # The same command line and environment: it is rank 2 of the same job in the same rendezvous
    # (today's dmnist refuses the rank, which the first process holds; elastic training will not).
    grep -q "rank 2" "$TMP/job/rank2.1.log" || { show "$TMP/job/rank2.1.log"; fail "the revived process is not rank 2"; }
    grep -q "rank 2 on h2 .*\[rank2.1.log\]" "$log" || { show "$log"; fail "the summary does not report rank 2's revived process"; }
    ok "killhost + revive host=2: rank 2 restarted ($(tail -n 1 "$TMP/job/rank2.1.log" | cut -c1-120))"
    ;;
elastic_*)
    mkdir -p "$TMP/job"
    EL=(--set experiment.elastic=true --set experiment.timeout_s=3 --set experiment.elastic_settle_s=0.5
        --set train.log_every=1 --metrics "$TMP/job/m.json")
    world_events() { grep -h '"world"' "$TMP/job/m.json"; }
    final() { python3 "$SRC/tests/lab/elastic_report.py" final "$TMP/job/m.json" "$1"; }
    gaps() { python3 "$SRC/tests/lab/elastic_report.py" gaps "$TMP/job/faults.log" "$TMP/job/progress.log"; }
    case $case in
    elastic_faults_gloo)
        [ -f "$SRC/data/mnist/train-images-idx3-ubyte.gz" ] || skip "no MNIST in $SRC/data/mnist (scripts/get-mnist.sh)"
        M=("$SRC/configs/cnn.ini" "${SMALL[@]:6}" --set data.path="$SRC/data/mnist" --set train.epochs=1)
        run_ok "$TMP/ref.log" "$RUN" --np 4 "${M[@]}" --set experiment.backend=gloo --metrics "$TMP/ref.json"
        acc_ref=$(python3 "$SRC/tests/lab/elastic_report.py" final "$TMP/ref.json" test_accuracy)
        budget=$(python3 "$SRC/tests/lab/elastic_report.py" final "$TMP/ref.json" global_batches)
        up --hosts 4 --rate 1gbit --delay 2ms
        k=$((20 + RANDOM % 41)) s=$((k + 40))
        job --np 4 --backend gloo --timeout 120 --faults "@step=$k kill rank=2; @step=$s stop rank=1" -- "${M[@]}" "${EL[@]}"
        [ $rc = 0 ] || { show "$log"; fail "the lab job exited with status $rc"; }
        [ "$(world_events | wc -l)" = 2 ] || { world_events; fail "expected two world changes"; }
        read -r w1 w2 <<<"$(world_events | sed 's/.*"step":\([0-9]*\).*/\1/' | tr '\n' ' ')"
        [ "$w1" -ge $k ] && [ "$w2" -ge $s ] || fail "world changes at steps $w1 and $w2, the faults at $k and $s: work was lost"
        b=$(final global_batches) acc=$(final test_accuracy)
        [ "$b" -le "$budget" ] && [ "$b" -gt $((budget - 4)) ] || fail "trained $b global batches, the budget is $budget"
        awk -v a="$acc" -v r="$acc_ref" 'BEGIN { d = a - r; if (d < 0) d = -d; exit !(d <= 0.003) }' ||
            fail "test accuracy $acc, uninterrupted $acc_ref: more than 0.3 points apart"
        ok "kill rank 2 at step $k, stop rank 1 at step $s: new worlds at steps $w1, $w2; accuracy $acc (uninterrupted $acc_ref); $b of $budget global batches; fault -> next step: $(gaps)"
        ;;
    elastic_linkcut_gloo)
        up --hosts 4 --rate 1gbit --delay 2ms
        job --np 4 --backend gloo --timeout 120 --faults "@4s linkdown host=3; @10s linkup host=3" -- "${ARGS[@]}" \
            --set train.total_batches=800 "${EL[@]}"
        [ $rc = 0 ] || { show "$log"; fail "the lab job exited with status $rc"; }
        b=$(final global_batches)
        [ "$b" -gt 796 ] || fail "the budget was not trained: $b of 800"
        [ -n "$(world_events)" ] || fail "no world change after the link cut"
        ok "link of h3 down from 4 s to 10 s: $(python3 "$SRC/tests/lab/elastic_report.py" worlds "$TMP/job/m.json"); fault -> next step: $(gaps)"
        ;;
    elastic_revive_gloo)
        up --hosts 4 --rate 1gbit --delay 2ms
        job --np 4 --backend gloo --timeout 120 --faults "@step=20 killhost host=2; @step=60 revive host=2" -- "${ARGS[@]}" \
            --set train.total_batches=1200 "${EL[@]}"
        [ $rc = 0 ] || { show "$log"; fail "the lab job exited with status $rc"; }
        world_events | grep -q '"from":4,"to":3' || { world_events; fail "no 4 -> 3"; }
        world_events | grep -q '"reason":"a rank joined".*"to":4' || { world_events; fail "the revived host did not rejoin"; }
        [ "$(final world_size)" = 4 ] || fail "the job ended with $(final world_size) ranks, not 4"
        ok "killhost h2 at step 20, revive at step 60: $(python3 "$SRC/tests/lab/elastic_report.py" worlds "$TMP/job/m.json"); fault -> next step: $(gaps)"
        ;;
    esac
    ;;
agents_gloo)
    up --hosts 2 --rate 1gbit --delay 2ms
    export DMNIST_RENDEZVOUS=file://$TMP/rdzv DMNIST_JOB_ID=agents$$
    mkdir -p "$TMP/rdzv"
    # agent HOST TRY: dmnist-run --np 2 as host HOST's agent, in the background
    agent() {
        "$LAB" exec $NAME h$1 -- timeout -k 5 100 "$RUN" --np 2 --nodes 2 --node-rank $1 --max-restarts 1 \
            "${ARGS[@]}" --set experiment.backend=gloo --set comm.iface=eth0 --set experiment.elastic=true \
            --set experiment.timeout_s=3 --set experiment.elastic_settle_s=0.5 --set train.total_batches=1200 \
            --metrics "$TMP/m.json" >"$TMP/agent$1.$2.log" 2>&1 &
        AGENT[$1]=$!
    }
    # kill_host HOST: every dmnist-run process in the host, its agent too (a lost machine)
    kill_host() {
        local p
        for p in $(ip netns pids "dmlab-$NAME-h$1"); do
            case $(cat /proc/$p/comm 2>/dev/null) in dmnist-run | timeout) kill -KILL "$p" ;; esac
        done
    }
    on_exit 'kill_host 0; kill_host 1'
    agent 0 0
    agent 1 0
    wait_for_line "$TMP/agent0.0.log" "step +30/" 60 "${AGENT[0]}" || { show "$TMP/agent0.0.log"; fail "no step 30"; }
    kill_host 1
    wait_for_line "$TMP/agent0.0.log" "world 4 -> 2 ranks" 30 "${AGENT[0]}" || { show "$TMP/agent0.0.log"; fail "no 4 -> 2 after host 1 was lost"; }
    agent 1 1
    wait_for_line "$TMP/agent0.0.log" "world 2 -> [34] ranks .*a rank joined" 40 "${AGENT[0]}" ||
        { show "$TMP/agent0.0.log"; show "$TMP/agent1.1.log"; fail "host 1's new agent did not join"; }
    wait "${AGENT[0]}" || { show "$TMP/agent0.0.log"; fail "host 0's agent failed"; }
    wait "${AGENT[1]}" || { show "$TMP/agent1.1.log"; fail "host 1's new agent failed"; }
    ws=$(python3 "$SRC/tests/lab/elastic_report.py" final "$TMP/m.json" world_size)
    [ "$ws" = 4 ] || fail "the job ended with $ws ranks, not 4"
    ok "agents on h0 and h1 (--np 2 --nodes 2): h1 lost and its agent started again: $(python3 "$SRC/tests/lab/elastic_report.py" worlds "$TMP/m.json")"
    ;;
restart_mpi)
    command -v "$MPIRUN" >/dev/null || skip "no mpirun"
    up --hosts 4 --rate 1gbit --delay 2ms
    A=("${ARGS[@]}" --set train.total_batches=160 --set train.checkpoint_every=5 --set train.log_every=1)
    run_ok "$TMP/ref.log" "$RUN" --np 4 "${A[@]}" --set experiment.backend=mpi --set train.checkpoint_dir="$TMP/ref"
    job --np 4 --backend mpi --timeout 60 --faults "@step=22 kill rank=2" -- "${A[@]}" --set train.checkpoint_dir="$TMP/ck"
    [ $rc = 1 ] || { show "$log"; fail "the job with rank 2 killed exited with status $rc, not 1"; }
    first=$took
    # the restart path, as dmnist-run --max-restarts takes it: the same job again with --resume
    job --np 4 --backend mpi --timeout 60 -- "${A[@]}" --set train.checkpoint_dir="$TMP/ck" --resume
    [ $rc = 0 ] || { show "$log"; fail "the restarted job exited with status $rc"; }
    from=$(grep -o "resuming from .*ckpt-[0-9]*" "$TMP/job/rank0.log" | grep -o "ckpt-[0-9]*")
    [ -n "$from" ] || { show "$TMP/job/rank0.log"; fail "the restarted job did not resume from a checkpoint"; }
    a=$("$TOOL" hash "$TMP/ref/ckpt-0000000040.dmck") && b=$("$TOOL" hash "$TMP/ck/ckpt-0000000040.dmck") ||
        fail "no final checkpoints"
    [ "$a" = "$b" ] || fail "the restarted job's final parameters $b differ from an uninterrupted run's $a"
    ok "mpi on 4 lab hosts: rank 2 killed at step 22 (the job ended after $first s), restarted from $from in $took s; final hash $b as uninterrupted"
    ;;
*) fail "unknown case $case" ;;
esac
