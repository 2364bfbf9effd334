# Shared by the shell tests (tests/distributed, tests/robustness, tests/fault,
# tests/slurm), sourced as `source tests/common/lib.sh PREFIX`: paths from
# ctest's environment, a scratch folder $TMP (PREFIX.XXXXXX) removed on
# exit, and every helper the scripts share: this file is their one home.
set -u
RUN=${DMNIST_RUN:?DMNIST_RUN must name dmnist-run}
TOOL=${DMNIST_CKPT_TOOL:?DMNIST_CKPT_TOOL must name ckpt_tool}
SRC=${DMNIST_SOURCE_DIR:?DMNIST_SOURCE_DIR must name the source tree}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/${1:?lib.sh needs the scratch folder prefix}.XXXXXX") || exit 1

# on_exit CMD: run CMD (eval'd) on exit, before $TMP is removed.
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

# show LOG: print a log indented, for failure reports.
show() { sed 's/^/    | /' "$1"; }

# now_ms: a wall clock in milliseconds (bash's EPOCHREALTIME; no bc, no fork).
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
# since_s T0_MS: seconds since now_ms gave T0_MS, as 1.234.
since_s() { local d=$(($(now_ms) - $1)); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

# wait_for_line LOG REGEX SECONDS [PID...]: poll until the log has a line
# matching REGEX. Returns 1 after SECONDS, or as soon as one of the PIDs
# (processes whose output goes to LOG) has exited without the line: a job
# that died at start is reported at once, not after SECONDS. Either way it
# prints why, with each PID's exit status (when it is a child of this
# shell) and the last lines of LOG.
wait_for_line() {
    local log=$1 re=$2 secs=$3 t0 p gone=
    shift 3
    t0=$(now_ms)
    while :; do
        grep -qE "$re" "$log" 2>/dev/null && return 0
        for p in "$@"; do kill -0 "$p" 2>/dev/null || gone=1; done
        if [ -n "$gone" ]; then
            grep -qE "$re" "$log" 2>/dev/null && return 0 # the line came just before the exit
            echo "no line matching '$re' in $log: the process exited after $(since_s "$t0") s"
            break
        fi
        if (($(now_ms) - t0 >= secs * 1000)); then
            echo "no line matching '$re' in $log after $secs s"
            break
        fi
        sleep 0.1
    done
    for p in "$@"; do
        if kill -0 "$p" 2>/dev/null; then
            echo "  process $p: still running"
        else
            wait "$p" 2>/dev/null
            local rc=$?
            if [ $rc = 127 ]; then
                echo "  process $p: exited (not a child of this shell: status unknown)"
            else
                echo "  process $p: exited with status $rc$( ((rc > 128)) && echo " (signal $((rc - 128)))")"
            fi
        fi
    done
    echo "  last lines of $log:"
    tail -n 15 "$log" 2>/dev/null | sed 's/^/    | /'
    return 1
}

# ---- running dmnist-run ------------------------------------------------------

# run_ok LOG CMD...: CMD must succeed within 100 s; else its log is shown.
run_ok() { _run_expect "$1" 0 "${@:2}"; }
# run_fails LOG WANT_RC CMD...: CMD must exit with status WANT_RC within 100 s.
run_fails() { _run_expect "$1" "$2" "${@:3}"; }
_run_expect() {
    local log=$1 want=$2 rc
    shift 2
    timeout -k 5 100 "$@" >"$log" 2>&1
    rc=$?
    [ $rc = "$want" ] || { show "$log"; fail "$* exited with status $rc, expected $want"; }
}

# has_plugin TYPE: dmnist-run lists a component of that type.
has_plugin() { "$RUN" --list-plugins 2>/dev/null | awk -v t="$1" '$2 == t { f = 1 } END { exit !f }'; }

# ---- checkpoints ---------------------------------------------------------------

# field FILE KEY: one header field of a checkpoint, as ckpt_tool info prints it.
field() { "$TOOL" info "$1" | sed -n "s/^$2=//p"; }

# expect_field FILE KEY VALUE
expect_field() {
    local got
    got=$(field "$1" "$2")
    [ "$got" = "$3" ] || fail "$1: $2 is '$got', expected '$3'"
}

# ckpt DIR STEP: the name of the checkpoint of STEP in DIR.
ckpt() { printf '%s/ckpt-%010d.dmck' "$1" "$2"; }

# checkpoint DIR: the one checkpoint file in DIR.
checkpoint() {
    local f=("$1"/ckpt-*.dmck)
    [ ${#f[@]} = 1 ] && [ -f "${f[0]}" ] || fail "expected one checkpoint in $1, found: ${f[*]}"
    echo "${f[0]}"
}

# ---- the processes of a job ----------------------------------------------------

# pids_with_env NAME=VALUE...: processes whose environment holds exactly
# these entries, every one.
pids_with_env() {
    local p e env
    for p in /proc/[0-9]*; do
        env=$(tr '\0' '\n' <"$p/environ" 2>/dev/null) || continue
        for e in "$@"; do grep -qxF -e "$e" <<<"$env" || continue 2; done
        echo "${p#/proc/}"
    done
}

# descendants PID: every process below PID (with ps: scripts/install-deps.sh
# installs procps; without it the test is skipped).
descendants() {
    command -v ps >/dev/null || skip "no ps command (Debian package procps)"
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

# ---- jobs of several ranks -----------------------------------------------------

# mpirun (DMNIST_MPIRUN overrides) and its arguments: as root it needs its
# consent, and more ranks than cores need --oversubscribe.
MPIRUN=${DMNIST_MPIRUN:-mpirun}
MPI_ARGS=(--oversubscribe)
[ "$(id -u)" = 0 ] && MPI_ARGS+=(--allow-run-as-root)

# The seed CNN shrunk (149,424 parameters instead of 2.4 million) on
# synthetic data, one thread per rank, for configs/cnn-synthetic.ini: for
# tests of the distributed semantics, not of accuracy (a step takes
# milliseconds).
SMALL=(--set data.type=synthetic --set data.train_size=4096 --set data.test_size=256
       --set layer.conv1.filters=8 --set layer.conv2.filters=16 --set layer.dense1.units=64
       --set experiment.threads=1 --no-progress)
