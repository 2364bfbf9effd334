# Shared by the scripts of tests/distributed and tests/robustness, sourced by
# their own lib.sh as `source tests/common/lib.sh PREFIX`: paths from ctest's
# environment, a scratch folder $TMP (PREFIX.XXXXXX) removed on exit, and the
# small helpers both folders use.
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
