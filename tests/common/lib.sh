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

# wait_for_line LOG REGEX SECONDS: poll until the log has a matching line.
wait_for_line() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
