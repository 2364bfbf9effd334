# Shared by the robustness scripts (sourced): tests/common/lib.sh (RUN,
# TOOL, SRC, $TMP, on_exit, fail/ok/skip, show, wait_for_line), then small
# checks on dmnist-run and on checkpoints.
source "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini

# run_ok LOG ARGS...: dmnist-run must succeed (within 100 s); else show its log.
run_ok() {
    local log=$1 rc
    shift
    timeout -k 5 100 "$RUN" "$@" >"$log" 2>&1
    rc=$?
    [ $rc = 0 ] || { cat "$log"; fail "dmnist-run $* exited with status $rc"; }
}

# run_fails LOG WANT_RC ARGS...: dmnist-run must exit with WANT_RC within 100 s.
run_fails() {
    local log=$1 want=$2 rc
    shift 2
    timeout -k 5 100 "$RUN" "$@" >"$log" 2>&1
    rc=$?
    [ $rc = "$want" ] || { cat "$log"; fail "dmnist-run $* exited with status $rc, expected $want"; }
}

# field FILE KEY: one header field of a checkpoint, as ckpt_tool info prints it.
field() { "$TOOL" info "$1" | sed -n "s/^$2=//p"; }

# expect_field FILE KEY VALUE
expect_field() {
    local got
    got=$(field "$1" "$2")
    [ "$got" = "$3" ] || fail "$1: $2 is '$got', expected '$3'"
}

has_plugin() { "$RUN" --list-plugins 2>/dev/null | awk -v t="$1" '$2 == t { f = 1 } END { exit !f }'; }

ckpt() { printf '%s/ckpt-%010d.dmck' "$1" "$2"; }

# pids_with_env NAME=VALUE: processes whose environment holds exactly that entry.
pids_with_env() {
    local p
    for p in /proc/[0-9]*; do
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "$1" && echo "${p#/proc/}"
    done
}
