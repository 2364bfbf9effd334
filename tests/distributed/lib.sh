# Shared by the tests/distributed scripts (sourced): tests/common/lib.sh
# (RUN, TOOL, SRC, $TMP, on_exit, fail/ok/skip, show, wait_for_line), then a
# small model and the helpers that start jobs and find one rank's process.
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh" dmnist-dist
CMP=$TOOL # checkpoint comparisons: "$CMP" hash | diff | within | beyond
MPIRUN=${DMNIST_MPIRUN:-mpirun}
CFG=$SRC/configs/cnn-synthetic.ini
# descendants and rank_pid find the ranks with ps (scripts/install-deps.sh installs procps).
command -v ps >/dev/null || skip "no ps command (Debian package procps)"

# The seed CNN shrunk (149,424 parameters instead of 2.4 million) on
# synthetic data, one thread per rank: the point of these tests is the
# distributed semantics, not accuracy, and a step takes milliseconds.
SMALL=(--set data.type=synthetic --set data.train_size=4096 --set data.test_size=256
       --set layer.conv1.filters=8 --set layer.conv2.filters=16 --set layer.dense1.units=64
       --set experiment.threads=1 --no-progress)

# mpirun as root needs its consent; more ranks than cores need --oversubscribe.
MPI_ARGS=(--oversubscribe)
[ "$(id -u)" = 0 ] && MPI_ARGS+=(--allow-run-as-root)

# run_ok LOG ARGS...: the command must succeed within 100 s; else show its log.
run_ok() {
    local log=$1 rc
    shift
    timeout -k 5 100 "$@" >"$log" 2>&1
    rc=$?
    [ $rc = 0 ] || { show "$log"; fail "$* exited with status $rc"; }
}

# descendants PID: every process below PID.
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}

# rank_pid JOB_PID RANK: the dmnist-run process of that rank under the job
# (DMNIST_RANK from dmnist-run --np or a test, OMPI_COMM_WORLD_RANK from mpirun).
rank_pid() {
    local p
    for p in "$1" $(descendants "$1"); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = dmnist-run ] || continue
        if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null |
            grep -qxF -e "DMNIST_RANK=$2" -e "OMPI_COMM_WORLD_RANK=$2"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# checkpoint DIR: the one checkpoint file in DIR.
checkpoint() {
    local f=("$1"/ckpt-*.dmck)
    [ ${#f[@]} = 1 ] && [ -f "${f[0]}" ] || fail "expected one checkpoint in $1, found: ${f[*]}"
    echo "${f[0]}"
}
