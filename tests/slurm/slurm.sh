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
# A job of 2 must be one job: one final metrics line (rank 0 writes it)
# saying world_size 2; and the job's rendezvous folder must be gone.
# The daemons are stopped on exit (and the scratch folder removed).
# Skipped (77), with the reason, where Slurm is not installed or cannot
# start here (a container without the privileges slurmd needs).
#   DMNIST_SLURM_KEEP=1 keeps the scratch folder and prints its path.
source "$(dirname "$0")/../common/lib.sh" dmnist-slurm
case_=${1:?CASE: gloo, mpi or batch}
W=$TMP
[ "${DMNIST_SLURM_KEEP:-0}" = 1 ] && { W=$(mktemp -d /tmp/dmnist-slurm-keep.XXXXXX); echo "keeping $W"; }

for c in munged slurmctld slurmd srun sinfo sbatch scontrol; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] ||
        skip "no $c (scripts/install-deps.sh --tests installs slurmctld slurmd slurm-client munge)"
done
export PATH=$PATH:/usr/sbin
[ "$(id -u)" = 0 ] || skip "slurmd must run as root to start job steps (this runs as uid $(id -u))"
data=$SRC/data/mnist
[ -e "$data/train-images-idx3-ubyte.gz" ] || [ -e "$data/train-images-idx3-ubyte" ] ||
    skip "no MNIST in $data (scripts/get-mnist.sh --from DIR puts it there)"

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

mkdir -p "$W/state" "$W/spool" "$W/log" "$W/munge" "$W/run"
chmod 700 "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$W/munge/munge.key"
sock=$W/munge/munge.socket
export SLURM_CONF=$W/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=dmnisttest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/run/slurmctld.pid
SlurmdPidFile=$W/run/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
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
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
: >"$W/plugstack.conf"

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
# The daemons, each with its own pid file, stopped on exit: jobs first (a
# bounded wait for their steps to end), then any slurmstepd of ours left.
stop_daemons() {
    local f p
    scancel --quiet --full "--name=dmnist-slurm-test" 2>/dev/null
    for _ in $(seq 50); do
        [ -z "$(squeue -h 2>/dev/null)" ] && ! steps_left && break
        sleep 0.1
    done
    for f in slurmd slurmctld munged; do
        p=$(cat "$W/run/$f.pid" 2>/dev/null) || continue
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for _ in $(seq 50); do
        local alive=
        for f in slurmd slurmctld munged; do
            p=$(cat "$W/run/$f.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1
        done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for f in slurmd slurmctld munged; do
        p=$(cat "$W/run/$f.pid" 2>/dev/null) && [ -n "$p" ] && kill -9 "$p" 2>/dev/null
    done
    for p in $(pgrep -x slurmstepd); do
        ours "$p" && kill -9 "$p" 2>/dev/null
    done
}
on_exit stop_daemons

# why DAEMON: the last lines of its log, for a skip or a failure.
why() { tail -n 5 "$W/log/$1.log" 2>/dev/null | sed 's/^/    | /'; }

munged --key-file="$W/munge/munge.key" --socket="$sock" --pid-file="$W/run/munged.pid" \
    --log-file="$W/log/munged.log" --seed-file="$W/munge/munge.seed" --force >"$W/log/munged.out" 2>&1 ||
    { cat "$W/log/munged.out" "$W/log/munged.log" 2>/dev/null; skip "munged did not start (above)"; }
slurmctld -i >"$W/log/slurmctld.out" 2>&1 || { why slurmctld; skip "slurmctld did not start (above)"; }
slurmd -N "$host" >"$W/log/slurmd.out" 2>&1 || { why slurmd; skip "slurmd did not start (above)"; }

# Bounded wait for the node to be idle.
state=
for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1)
    [ "$state" = idle ] && break
    sleep 0.2
done
if [ "$state" != idle ]; then
    echo "sinfo: node $host is '${state:-not reported}' after 30 s"
    why slurmctld
    why slurmd
    skip "Slurm did not bring the node up here"
fi
echo "Slurm is up: node $host idle, slurmctld on 127.0.0.1:$ctld_port, slurmd on :$slurmd_port"

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
    [ $rc = 0 ] || { why slurmd; fail "srun exited with status $rc"; }
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
*) fail "unknown case '$case_' (gloo, mpi or batch)" ;;
esac
