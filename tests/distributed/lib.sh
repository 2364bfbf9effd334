# Shared by the tests/distributed scripts (sourced): paths from ctest's
# environment, a scratch folder removed on exit, a small model, and the
# helpers that start jobs and find one rank's process.
set -u
RUN=${DMNIST_RUN:?DMNIST_RUN must name dmnist-run}
CMP=${DMNIST_CKPT_TOOL:?DMNIST_CKPT_TOOL must name ckpt_tool}
SRC=${DMNIST_SOURCE_DIR:?DMNIST_SOURCE_DIR must name the source tree}
MPIRUN=${DMNIST_MPIRUN:-mpirun}
CFG=$SRC/configs/cnn-synthetic.ini
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-dist.XXXXXX") || exit 1
_dm_cleanup=()
_dm_exit() {
    local c
    for c in "${_dm_cleanup[@]}"; do eval "$c"; done
    rm -rf "$TMP"
}
trap _dm_exit EXIT
on_exit() { _dm_cleanup+=("$1"); }

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
skip() { echo "skipped: $*"; exit 77; }

# The seed CNN shrunk (149,424 parameters instead of 2.4 million) on
# synthetic data, one thread per rank: the point of these tests is the
# distributed semantics, not accuracy, and a step takes milliseconds.
SMALL=(--set data.type=synthetic --set data.train_size=4096 --set data.test_size=256
       --set layer.conv1.filters=8 --set layer.conv2.filters=16 --set layer.dense1.units=64
       --set experiment.threads=1 --no-progress)

# mpirun as root needs its consent; more ranks than cores need --oversubscribe.
MPI_ARGS=(--oversubscribe)
[ "$(id -u)" = 0 ] && MPI_ARGS+=(--allow-run-as-root)

# show LOG: print a log indented, for failure reports.
show() { sed 's/^/    | /' "$1"; }

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

# wait_for_line LOG REGEX SECONDS: poll until the log has a matching line.
wait_for_line() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# checkpoint DIR: the one checkpoint file in DIR.
checkpoint() {
    local f=("$1"/ckpt-*.dmck)
    [ ${#f[@]} = 1 ] && [ -f "${f[0]}" ] || fail "expected one checkpoint in $1, found: ${f[*]}"
    echo "${f[0]}"
}
