#!/usr/bin/env bash
# slurm.sh CASE
#
# A real Slurm on this machine: munged with a fresh key, slurmctld and one
# slurmd (this host, 2 CPUs, proctrack/linuxproc, task/none) from Debian's
# packages, every file (config, state, spool, logs, pid files, munge
# socket) in a scratch folder, on two free loopback ports. Once `sinfo`
# shows the node idle, CASE runs a 2-task training job through srun:
#   gloo   srun -n 2 dmnist-run ... --set experiment.backend=gloo: rank,
#          world size and local rank from Slurm's variables, the gloo
#          rendezvous derived from the job (a node-local folder named by
#          job and step id)
#   mpi    srun --mpi=pmix -n 2 dmnist-run ... --set experiment.backend=mpi
#          (pmi2 when Slurm has no pmix plugin)
#   batch  sbatch -n 2 of a script whose own shell first runs dmnist-run
#          alone (it must train as one rank, backend local, not take itself
#          for rank 0 of 2), then srun dmnist-run with gloo (one job of 2)
#   array  scripts/sweep --slurm: a 2x2 grid as one array job; one task is
#          held (its wrapper blocks on a FIFO) and cancelled with scancel
#          while it runs; the sweep must record it CANCELLED and failed, and
#          the same command again must resubmit that task alone
#   tools  scripts/seeds --slurm (every recipe's array queued, then each
#          collected) and scripts/compare-backends --slurm (a task per
#          backend, 2 ranks each)
# Two nodes (cases nodes2-gloo, nodes2-mpi): two network namespaces, each
# its own host (its own UTS namespace: hostname dmn1 or dmn2) with one
# slurmd on 10.66.X.1 and 10.66.X.2, joined by a bridge on which slurmctld
# (root namespace) has 10.66.X.254; munged's socket is a file, so both see
# it. Then srun -N 2 -n 2: one rank per node, gloo bound to each namespace's
# interface (comm.iface) with a rendezvous folder both see, or mpi through
# srun --mpi=pmix. Skipped where network namespaces cannot be made here.
# A job of 2 must be one job: one final metrics line (rank 0 writes it)
# saying world_size 2; and the job's rendezvous folder must be gone.
# The daemons, the namespaces and the bridge are removed on exit (and the
# scratch folder). Skipped (77), with the reason, where Slurm is not
# installed or cannot start here (a container without the privileges
# slurmd needs).
#   DMNIST_SLURM_KEEP=1 keeps the scratch folder and prints its path.
source "$(dirname "$0")/../common/lib.sh" dmnist-slurm
# Stopped (Ctrl-C, kill): exit through lib.sh's EXIT trap, which stops the
# daemons and removes the namespaces.
trap 'exit 130' INT
trap 'exit 143' TERM
case_=${1:?CASE: gloo, mpi, batch, array, tools, nodes2-gloo or nodes2-mpi}
W=$TMP
[ "${DMNIST_SLURM_KEEP:-0}" = 1 ] && { W=$(mktemp -d /tmp/dmnist-slurm-keep.XXXXXX); echo "keeping $W"; }

for c in munged slurmctld slurmd srun sinfo sbatch scontrol; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] ||
        skip "no $c (scripts/install-deps.sh --tests installs slurmctld slurmd slurm-client munge)"
done
export PATH=$PATH:/usr/sbin
[ "$(id -u)" = 0 ] || skip "slurmd must run as root to start job steps (this runs as uid $(id -u))"
need_mnist() {
    local data=$SRC/data/mnist
    [ -e "$data/train-images-idx3-ubyte.gz" ] || [ -e "$data/train-images-idx3-ubyte" ] ||
        skip "no MNIST in $data (scripts/get-mnist.sh --from DIR puts it there)"
}
case $case_ in array | tools) ;; *) need_mnist ;; esac
nodes=1
case $case_ in nodes2-*) nodes=2 ;; esac

# Two free TCP ports on loopback, from a range Linux does not hand out itself.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 10000))
        ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return 0; }
    done
    return 1
}
command -v ss >/dev/null || skip "no ss command (Debian package iproute2)"
ctld_port=$(free_port) && slurmd_port=$(free_port) || fail "no free port"
[ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((slurmd_port + 1))
host=$(hostname -s)
cpus=2
ctld_addr=127.0.0.1
node_names=("$host")
node_addrs=(127.0.0.1)

# Two nodes: a bridge in this namespace (slurmctld's address, .254) and per
# node a network namespace joined to it by a veth pair whose inner end is
# named dmeth0 in both (so one comm.iface fits every node). Names carry this
# shell's pid: tests of other checkouts may do the same at the same time.
ns=() br=dmbr$$ net=
remove_netns() {
    local n
    # the daemons first: scancel needs slurmctld's address on the bridge
    declare -F stop_daemons >/dev/null && stop_daemons
    for n in "${ns[@]}"; do ip netns del "$n" 2>/dev/null; done # takes its veth pair along
    ip link del "$br" 2>/dev/null
}
if [ "$nodes" = 2 ]; then
    command -v ip >/dev/null || skip "no ip command (Debian package iproute2)"
    for c in unshare nsenter; do
        command -v $c >/dev/null || skip "no $c command (Debian package util-linux)"
    done
    # a /24 in 10.66.0.0/16 that no route of this machine uses yet
    for x in $(seq $(($$ % 200 + 20)) 254) $(seq 20 254); do
        ip -4 route show | grep -q "^10\.66\.$x\." || { net=10.66.$x; break; }
    done
    [ -n "$net" ] || skip "no free 10.66.X.0/24 subnet for the two namespaces"
    ns=("dmnist-n1-$$" "dmnist-n2-$$")
    on_exit remove_netns
    if ! err=$(ip netns add "${ns[0]}" 2>&1); then
        ns=()
        skip "network namespaces cannot be made here (ip netns add: $err)"
    fi
    ip netns add "${ns[1]}" || fail "ip netns add ${ns[1]}"
    { ip link add "$br" type bridge && ip addr add "$net.254/24" dev "$br" && ip link set "$br" up; } ||
        skip "no bridge here (ip link add type bridge failed)"
    for i in 1 2; do
        v=dmv$i-$$
        ip link add "$v" type veth peer name "dmp$i-$$" || skip "no veth pair here (ip link add type veth failed)"
        { ip link set "dmp$i-$$" netns "${ns[i - 1]}" &&
            ip -n "${ns[i - 1]}" link set "dmp$i-$$" name dmeth0 &&
            ip -n "${ns[i - 1]}" addr add "$net.$i/24" dev dmeth0 &&
            ip -n "${ns[i - 1]}" link set dmeth0 up && ip -n "${ns[i - 1]}" link set lo up &&
            ip link set "$v" master "$br" && ip link set "$v" up; } || fail "could not wire namespace ${ns[i - 1]}"
    done
    # A bridge whose frames a firewall drops (br_netfilter) lets nothing through.
    if command -v ping >/dev/null; then
        for _ in $(seq 30); do
            ip netns exec "${ns[0]}" ping -c1 -W1 "$net.2" >/dev/null 2>&1 && break
            sleep 0.1
        done
        ip netns exec "${ns[0]}" ping -c1 -W1 "$net.2" >/dev/null 2>&1 ||
            skip "the namespaces do not reach each other over bridge $br (a firewall on bridged traffic?)"
    fi
    ctld_addr=$net.254
    node_names=(dmn1 dmn2)
    node_addrs=("$net.1" "$net.2")
    cpus=1 # one CPU per node: srun -N 2 -n 2 puts one rank on each
fi

mkdir -p "$W/state" "$W/spool" "$W/log" "$W/munge" "$W/run"
chmod 700 "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$W/munge/munge.key"
sock=$W/munge/munge.socket
export SLURM_CONF=$W/slurm.conf
{
    cat <<EOF
ClusterName=dmnisttest
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool/%n
SlurmctldPidFile=$W/run/slurmctld.pid
SlurmdPidFile=$W/run/slurmd-%n.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
PlugStackConfig=$W/plugstack.conf
EOF
    for i in "${!node_names[@]}"; do
        echo "NodeName=${node_names[i]} NodeAddr=${node_addrs[i]} CPUs=$cpus State=UNKNOWN"
    done
    echo "PartitionName=test Nodes=$(IFS=,; echo "${node_names[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} >"$SLURM_CONF"
: >"$W/plugstack.conf"
[ "$nodes" = 1 ] || echo "PMIxCliTmpDirBase=$W/nodetmp" >"$W/mpi.conf" # see the slurmd start below

# ours PID: the process works in $W or writes there (a slurmstepd of our
# slurmd has its cwd in $W/log and slurmd.log open).
ours() {
    local l
    case $(readlink "/proc/$1/cwd" 2>/dev/null) in "$W"/* | "$W") return 0 ;; esac
    for l in /proc/"$1"/fd/*; do
        case $(readlink "$l" 2>/dev/null) in "$W"/*) return 0 ;; esac
    done
    return 1
}
steps_left() {
    local p
    for p in $(pgrep -x slurmstepd); do ours "$p" && return 0; done
    return 1
}
# pid files of our daemons (one slurmd per node)
pid_files() { ls "$W"/run/*.pid 2>/dev/null; }
# The daemons, each with its own pid file, stopped on exit: jobs first (a
# bounded wait for their steps to end), then any slurmstepd of ours left.
# Every job of this private slurmctld is ours.
stop_daemons() {
    local f p
    # without a slurmctld, scancel and squeue would each retry for seconds
    p=$(cat "$W/run/slurmctld.pid" 2>/dev/null)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        scancel --quiet --full --user=root 2>/dev/null
        for _ in $(seq 50); do
            [ -z "$(squeue -h 2>/dev/null)" ] && ! steps_left && break
            sleep 0.1
        done
    fi
    for f in $(pid_files); do
        p=$(cat "$f" 2>/dev/null) && [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for _ in $(seq 50); do
        local alive=
        for f in $(pid_files); do
            p=$(cat "$f" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1
        done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for f in $(pid_files); do
        p=$(cat "$f" 2>/dev/null) && [ -n "$p" ] && kill -9 "$p" 2>/dev/null
    done
    for p in $(pgrep -x slurmstepd); do
        ours "$p" && kill -9 "$p" 2>/dev/null
    done
}
on_exit stop_daemons

# why DAEMON: the last lines of its logs, for a skip or a failure.
why() {
    local f
    for f in "$W"/log/"$1"*.log; do
        [ -e "$f" ] || continue
        echo "  $(basename "$f"):"
        tail -n 5 "$f" | sed 's/^/    | /'
    done
}

munged --key-file="$W/munge/munge.key" --socket="$sock" --pid-file="$W/run/munged.pid" \
    --log-file="$W/log/munged.log" --seed-file="$W/munge/munge.seed" --force >"$W/log/munged.out" 2>&1 ||
    { cat "$W/log/munged.out" "$W/log/munged.log" 2>/dev/null; skip "munged did not start (above)"; }
slurmctld -i >"$W/log/slurmctld.out" 2>&1 || { why slurmctld; skip "slurmctld did not start (above)"; }
for i in "${!node_names[@]}"; do
    n=${node_names[i]}
    mkdir -p "$W/spool/$n"
    if [ "$nodes" = 1 ]; then
        slurmd -N "$n" >"$W/log/slurmd-$n.out" 2>&1 || { why slurmd; skip "slurmd did not start (above)"; }
    else
        # a host of its own: its network namespace, its own hostname and
        # its own node-local temporary folder at the same path $W/nodetmp
        # (PMIx makes its per-step folders there: on one /tmp two nodes'
        # would collide). nsenter, not ip netns exec: that remounts /sys,
        # hiding the cgroup file system slurmd reads.
        mkdir -p "$W/nodetmp" "$W/nodetmp-$n"
        # shellcheck disable=SC2016 # $1..$3 are the inner shell's
        nsenter --net="/run/netns/${ns[i]}" unshare --uts --mount --propagation private \
            sh -c 'hostname "$1" && mount --bind "$2" "$3" && exec slurmd -N "$1"' sh "$n" "$W/nodetmp-$n" "$W/nodetmp" \
            >"$W/log/slurmd-$n.out" 2>&1 ||
            { cat "$W/log/slurmd-$n.out"; why slurmd; skip "slurmd did not start in namespace ${ns[i]} (above)"; }
    fi
done

# Bounded wait for every node to be idle.
idle() { [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" = "${#node_names[@]}" ]; }
for _ in $(seq 150); do
    idle && break
    sleep 0.2
done
if ! idle; then
    echo "sinfo: nodes $(sinfo -h -N -o '%N %T' 2>/dev/null | tr '\n' ' ') after 30 s"
    why slurmctld
    why slurmd
    skip "Slurm did not bring the node${node_names[1]:+s} up here"
fi
echo "Slurm is up: ${node_names[*]} idle (${node_addrs[*]}), slurmctld on $ctld_addr:$ctld_port, slurmd on :$slurmd_port"

cd "$SRC" || fail "cd $SRC"
# configs/cnn.ini on real MNIST, shrunk (8 and 16 filters, 64 units) to 40
# steps of the job: the point is the launch, not accuracy.
SMALL=(--set train.total_batches=40 --set train.log_every=10 --set layer.conv1.filters=8
       --set layer.conv2.filters=16 --set layer.dense1.units=64 --set experiment.threads=1 --no-progress)
log=$W/job.log
metrics=$W/m.jsonl
srun_job() {
    echo "+ srun $*"
    timeout -k 5 90 srun --job-name=dmnist-slurm-test --time=2 "$@" >"$log" 2>&1
    local rc=$?
    sed 's/^/    | /' "$log"
    [ $rc = 0 ] && return 0
    why slurmd
    # PMIx that cannot set up a step here (the MPI plugin, not dmnist): a skip
    local pmix
    pmix=$(grep -h "mpi/pmix.*\(failed\|Cannot\)" "$W"/log/slurmd*.log 2>/dev/null | head -n1)
    [ -z "$pmix" ] || skip "srun --mpi=pmix cannot start a step here: ${pmix#*error: }"
    fail "srun exited with status $rc"
}
# check_one_job N: $metrics holds one final line (one job: only rank 0
# writes it), and it says world_size N.
check_one_job() {
    local n
    n=$(grep -c '"event":"final"' "$metrics" 2>/dev/null)
    [ "$n" = 1 ] || fail "$n final metrics lines in $metrics, expected 1 (one job)"
    grep '"event":"final"' "$metrics" | grep -q '"world_size":'"$1"'[,}]' ||
        fail "the final line does not say world_size $1: $(grep '"event":"final"' "$metrics")"
}

case $case_ in
gloo)
    srun_job -n 2 -l "$RUN" configs/cnn.ini --set experiment.backend=gloo "${SMALL[@]}" --metrics "$metrics"
    check_one_job 2
    # The first job of this fresh slurmctld is job 1, its step 0.
    [ ! -e /tmp/dmnist-slurm-1.0 ] || fail "the rendezvous folder /tmp/dmnist-slurm-1.0 is left behind"
    ok "srun -n 2, gloo: one job of world size 2"
    ;;
mpi)
    mpi=pmix
    srun --mpi=list 2>&1 | grep -qw pmix || mpi=pmi2
    srun --mpi=list 2>&1 | grep -qw "$mpi" || skip "this Slurm has neither the pmix nor the pmi2 MPI plugin"
    srun_job --mpi=$mpi -n 2 -l "$RUN" configs/cnn.ini --set experiment.backend=mpi "${SMALL[@]}" \
        --metrics "$metrics"
    check_one_job 2
    ok "srun --mpi=$mpi -n 2, mpi: one job of world size 2"
    ;;
batch)
    # sbatch -n 2: the script's own shell runs dmnist-run alone (no step: it
    # must train as one rank, backend local), then srun starts the 2 ranks.
    solo=$W/solo.jsonl
    {
        echo '#!/bin/bash'
        printf '%q ' "$RUN" configs/cnn.ini "${SMALL[@]}" --metrics "$solo"
        echo
        printf '%q ' srun -l "$RUN" configs/cnn.ini --set experiment.backend=gloo "${SMALL[@]}" --metrics "$metrics"
        echo
    } >"$W/job.sh"
    echo "+ sbatch -n 2 -W job.sh:"
    sed 's/^/    | /' "$W/job.sh"
    timeout -k 5 90 sbatch --job-name=dmnist-slurm-test --time=2 -n 2 -W -o "$log" "$W/job.sh" >/dev/null 2>"$W/sbatch.err"
    rc=$?
    sed 's/^/    | /' "$log" "$W/sbatch.err"
    [ $rc = 0 ] || { why slurmd; fail "sbatch -W exited with status $rc"; }
    metrics=$solo check_one_job 1
    check_one_job 2
    ok "sbatch -n 2: the batch shell trained alone (world size 1), its srun step as one job of 2"
    ;;
nodes2-gloo | nodes2-mpi)
    # Each task says where it runs (hostname, Slurm's node name, the address
    # on dmeth0), then becomes the rank. train.sync_check_every makes the
    # ranks compare parameter hashes: both must hold the same model.
    # shellcheck disable=SC2016 # expanded by each task's shell
    where='echo "on $(hostname) node $SLURMD_NODENAME addr $(ip -4 -o addr show dev dmeth0 | awk "{print \$4}")"; exec "$@"'
    if [ "$case_" = nodes2-gloo ]; then
        # several nodes: a rendezvous folder both see (the scratch folder;
        # the mount namespace is shared), and gloo on the namespace's interface
        mkdir -p "$W/rdzv"
        export DMNIST_RENDEZVOUS=file://$W/rdzv
        srun_job -N 2 -n 2 -l bash -c "$where" task "$RUN" configs/cnn.ini --set experiment.backend=gloo \
            --set comm.iface=dmeth0 --set train.sync_check_every=10 "${SMALL[@]}" --metrics "$metrics"
    else
        srun --mpi=list 2>&1 | grep -qw pmix || skip "this Slurm has no pmix MPI plugin (srun --mpi=list)"
        # Open MPI between the namespaces: TCP on dmeth0 (no shared memory:
        # the ranks are on different nodes for it too)
        export OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=dmeth0 OMPI_MCA_oob_tcp_if_include=dmeth0
        srun_job --mpi=pmix -N 2 -n 2 -l bash -c "$where" task "$RUN" configs/cnn.ini --set experiment.backend=mpi \
            --set train.sync_check_every=10 "${SMALL[@]}" --metrics "$metrics"
    fi
    for r in 0 1; do
        grep -qE "^ *$r: on dmn$((r + 1)) node dmn$((r + 1)) addr $net\.$((r + 1))/24$" "$log" ||
            fail "rank $r did not run on node dmn$((r + 1)) ($net.$((r + 1))): $(grep -E "^ *$r: on " "$log")"
    done
    grep -qE '^ *0: .*2 ranks \((gloo|mpi)\)' "$log" || fail "rank 0 did not start a job of 2 ranks"
    grep -qE '^ *0: test loss [0-9.]+ +test accuracy' "$log" || fail "no final test accuracy line"
    grep -qE '^ *0: sync-check step 20: parameter hash [0-9a-f]+ on all 2 ranks' "$log" ||
        fail "no sync-check line saying both ranks hold the same parameters at step 20"
    check_one_job 2
    ok "srun -N 2 -n 2, ${case_#nodes2-}: one rank on each of dmn1 and dmn2, one job of world size 2, parameters in sync"
    ;;
array)
    # scripts/sweep --slurm on a 2x2 grid of tests/tools/tiny.ini (synthetic
    # data, 16 steps: seconds). The wrapper logs each call; while $hold
    # exists, the run lr=0.05 batch 32 writes its task id to $held and then
    # blocks reading a FIFO nobody writes: it runs until cancelled, using no
    # CPU, and the test knows when to cancel it without sleeping.
    hold=$W/hold held=$W/held calls=$W/calls.log
    mkfifo "$W/fifo" && : >"$hold"
    cat >"$W/wrapper" <<EOF
#!/bin/bash
echo "\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID} \$*" >>'$calls'
case " \$* " in
*" optimizer.lr=0.05 "*" data.batch_size=32 "*)
    if [ -e '$hold' ]; then
        echo "\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}" >'$held.tmp' && mv '$held.tmp' '$held'
        read -r _ <'$W/fifo'
        exit 9
    fi ;;
esac
exec '$RUN' "\$@"
EOF
    chmod +x "$W/wrapper"
    out=$W/sw
    # rows RESULTS: one line per run of results.csv: run status job state exit [reason]
    rows() {
        python3 -c 'import csv, sys
for r in csv.DictReader(open(sys.argv[1], newline="")):
    print(r["run"], r["status"], r.get("slurm_job") or "-", r.get("slurm_state") or "-", r.get("slurm_exit") or "-",
          r["reason"])' "$1"
    }
    sweep=(python3 "$SRC/scripts/sweep" "$SRC/tests/tools/tiny.ini" "optimizer.lr=0.01,0.05" "data.batch_size=16,32"
           --slurm "--sbatch=--time=2 --job-name=dmnist-slurm-test" --wait-max 40 --no-plots
           --dmnist-run "$W/wrapper" --out "$out")
    echo "+ ${sweep[*]} &"
    timeout -k 5 50 "${sweep[@]}" >"$W/sweep1.log" 2>&1 &
    sweep_pid=$!
    wait_for_line "$held" . 30 "$sweep_pid" || fail "the held task did not start"
    task=$(cat "$held")
    # the other three runs end first: then the cancel is the only thing left
    for _ in $(seq 300); do
        [ "$(grep -c '^\[.*done    test acc' "$W/sweep1.log")" = 3 ] && break
        sleep 0.1
    done
    echo "+ scancel $task   (while it runs: $(squeue -h -j "$task" -o %T))"
    scancel "$task" || fail "scancel $task failed"
    wait "$sweep_pid"
    rc=$?
    show "$W/sweep1.log"
    [ $rc = 1 ] || fail "the sweep with a cancelled task exited $rc, expected 1 (a run failed)"
    grep -q "task $task CANCELLED  FAILED" "$W/sweep1.log" || fail "the sweep did not report task $task CANCELLED"
    echo "+ results.csv (run, status, slurm_job, slurm_state, slurm_exit, reason):"
    rows "$out/results.csv" >"$W/rows1"
    show "$W/rows1"
    grep -q "^np1_optimizer.lr=0.05_data.batch_size=32 failed $task CANCELLED " "$W/rows1" ||
        fail "results.csv does not record task $task as failed and CANCELLED"
    [ "$(grep -c ' done [0-9]*_[0-9] COMPLETED 0:0 *$' "$W/rows1")" = 3 ] || fail "results.csv: not 3 runs done and COMPLETED"

    # Resume: the same command submits the cancelled run alone.
    rm -f "$hold"
    before=$(wc -l <"$calls")
    echo "+ ${sweep[*]}"
    timeout -k 5 50 "${sweep[@]}" >"$W/sweep2.log" 2>&1
    rc=$?
    show "$W/sweep2.log"
    [ $rc = 0 ] || fail "the resumed sweep exited $rc"
    grep -q "(3 already finished, 0 queued or running, 1 to submit)" "$W/sweep2.log" ||
        fail "the resumed sweep did not find 3 finished and 1 to submit"
    grep -qE "^sweep: submitted array job [0-9]+: 1 task \(3\)" "$W/sweep2.log" ||
        fail "the resumed sweep did not submit task 3 alone"
    new=$(tail -n +$((before + 1)) "$calls")
    if [ "$(echo "$new" | wc -l)" != 1 ] || [[ $new != *" optimizer.lr=0.05 "*" data.batch_size=32 "* ]]; then
        fail "the resume started other runs: $new"
    fi
    echo "+ results.csv (run, status, slurm_job, slurm_state, slurm_exit, reason):"
    rows "$out/results.csv" >"$W/rows2"
    show "$W/rows2"
    [ "$(grep -c ' done [0-9]*_[0-9] COMPLETED 0:0 *$' "$W/rows2")" = 4 ] || fail "results.csv after the resume: not 4 runs done"
    grep -q "^np1_optimizer.lr=0.05_data.batch_size=32 done ${new%% *} COMPLETED 0:0" "$W/rows2" ||
        fail "the resubmitted run's row does not name its new task ${new%% *}"
    ok "array sweep: task $task cancelled and recorded CANCELLED; the resume resubmitted it alone (${new%% *}); 4 rows done"
    ;;
tools)
    # scripts/seeds and scripts/compare-backends with --slurm (tiny.ini,
    # synthetic data): seeds submits every recipe's array, then collects;
    # compare-backends runs one task per backend, each a 2-rank srun step.
    tiny=$SRC/tests/tools/tiny.ini
    echo "+ seeds $tiny --seeds 1,2 --recipe base= --recipe lr1=optimizer.lr=0.1 --slurm ..."
    timeout -k 5 50 python3 "$SRC/scripts/seeds" "$tiny" --seeds 1,2 --recipe base= --recipe lr1=optimizer.lr=0.1 \
        --out "$W/seeds" --slurm --sbatch="--time=2 --job-name=dmnist-slurm-test" --wait-max 40 >"$W/seeds.log" 2>&1
    rc=$?
    show "$W/seeds.log"
    [ $rc = 0 ] || fail "seeds --slurm exited $rc"
    [ "$(grep -cE '^sweep: submitted array job [0-9]+: 2 tasks' "$W/seeds.log")" = 2 ] ||
        fail "seeds --slurm did not submit one array of 2 tasks per recipe"
    # both arrays were submitted before the first was collected
    [ "$(grep -m1 -n 'seeds: base: (the config' "$W/seeds.log" | cut -d: -f1)" -gt \
      "$(grep -n '^sweep: submitted array job' "$W/seeds.log" | tail -n1 | cut -d: -f1)" ] ||
        fail "seeds --slurm waited for a recipe before submitting the next"
    for r in base lr1; do
        grep -qE "^ *$r +2/2 " "$W/seeds.log" || fail "seeds: recipe $r does not have 2/2 runs"
    done
    backends=gloo mpi_type=
    if [ -e "$DMNIST_BUILD_DIR/plugins/dm_mpi.so" ]; then
        for t in pmix pmi2; do srun --mpi=list 2>&1 | grep -qw $t && { mpi_type=$t; break; }; done
        [ -n "$mpi_type" ] && backends=gloo,mpi
    fi
    echo "+ compare-backends --np 2 --backends $backends $tiny --slurm ..."
    SLURM_MPI_TYPE=$mpi_type timeout -k 5 50 python3 "$SRC/scripts/compare-backends" --np 2 --backends "$backends" \
        "$tiny" --out "$W/cmp" --slurm --sbatch="--time=2 --job-name=dmnist-slurm-test" --wait-max 40 >"$W/cmp.log" 2>&1
    rc=$?
    show "$W/cmp.log"
    [ $rc = 0 ] || fail "compare-backends --slurm exited $rc"
    for b in ${backends//,/ }; do
        grep -qE "^== $b: task [0-9]+_[0-9] COMPLETED \(exit code 0:0\)" "$W/cmp.log" ||
            fail "compare-backends: no COMPLETED task for $b"
        python3 -c 'import csv, sys
rows = {r["backend"]: r for r in csv.DictReader(open(sys.argv[1]))}
r = rows.get(sys.argv[2]) or sys.exit("no row")
sys.exit(0 if r["status"] == "done" and r["ranks"] == "2" else "status %s, ranks %s" % (r["status"], r["ranks"]))' \
            "$W/cmp/compare.csv" "$b" || fail "compare.csv: backend $b is not a done run of 2 ranks"
    done
    ok "seeds --slurm (2 recipes x 2 seeds, both arrays queued first) and compare-backends --slurm ($backends, 2 ranks each)"
    ;;
*) fail "unknown case '$case_' (gloo, mpi, batch, array, tools, nodes2-gloo or nodes2-mpi)" ;;
esac
