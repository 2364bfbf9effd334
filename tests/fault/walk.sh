#!/usr/bin/env bash
# walk.sh CASE: failed system calls during a run that writes checkpoints.
#
# The run: tests/robustness/small.ini resumed from a step-4 checkpoint and
# trained to step 12, a checkpoint every 2 steps (keep 2), a --metrics file.
# Under tests/fault/faultinject.so (LD_PRELOAD) with DMNIST_FAULT=KIND:N, once
# for every N from 1 to the number of KIND calls a clean run makes (counted
# by the shim) and once past it. For every N:
#   - the run ends by itself within 60 s, with status 0 or 1 (never a
#     signal, a hang or a sanitizer report);
#   - status 1 comes with exactly one line on stderr, "dmnist-run: ...";
#     status 0 with none, and the final "test loss" line;
#   - the shim's log names the failed call (so the walk really failed it);
#   - no temporary checkpoint file is left in the folder;
#   - the newest checkpoint in the folder loads (ckpt_tool info), and
#     `dmnist-run --resume` from it, without faults, finishes the run.
#
#   shim    the shim itself: a bad DMNIST_FAULT is refused with exit 2, and
#           DMNIST_FAULT=open:1 makes a shell's first redirection fail
#   fsync | write | rename | open
#           walk N over every call of that kind (open: opens for writing)
#   malloc  walk N over every malloc-family call made by dmnist's own code
#           (DMNIST_FAULT_CALLER = the build folder: about 160 calls)
#   malloc_libc  (by hand, not a ctest case: it still fails) the same over
#           the allocations libc makes for dmnist (strdup, fopen, opendir,
#           dlopen: about 780 calls). A walk over every allocation of the
#           process is not useful: most of its ~75,000 are cuBLAS's static
#           initialisers (loaded with the CUDA-enabled plugins), which
#           crash when one fails.
#
# Skipped (77) in the sanitizer build, where the shim is not built.
source "$(dirname "$0")/../common/lib.sh" dmnist-fault
SHIM=${DMNIST_FAULTINJECT:-}
[ -n "$SHIM" ] || skip "no fault-injection shim in this build (the sanitizer build: ASan must own malloc)"
[ -f "$SHIM" ] || fail "DMNIST_FAULTINJECT=$SHIM does not exist"
CFG=$SRC/tests/robustness/small.ini
case=${1:?case}

# the run under test, resumed from $1 (a folder holding the step-4 checkpoint)
args() {
    echo --resume --set train.checkpoint_dir="$1" --set train.checkpoint_every=2 --set train.keep_checkpoints=2 \
        --metrics "$1/metrics.jsonl" "$CFG" 12
}

# base: the step-4 checkpoint every try starts from
mkdir "$TMP/base"
timeout -k 5 60 "$RUN" --set train.checkpoint_dir="$TMP/base" "$CFG" 4 >"$TMP/base.log" 2>&1 ||
    { show "$TMP/base.log"; fail "the clean step-4 run failed"; }

# count KIND [CALLER]: how many KIND calls a clean run makes.
count() {
    rm -rf "$TMP/count" && cp -r "$TMP/base" "$TMP/count"
    # shellcheck disable=SC2046
    timeout -k 5 60 env LD_PRELOAD="$SHIM" DMNIST_FAULT_REPORT="$TMP/count/report" DMNIST_FAULT_CALLER="${2:-}" \
        "$RUN" $(args "$TMP/count") >"$TMP/count.log" 2>&1 ||
        { show "$TMP/count.log"; fail "the clean run under the shim failed"; }
    awk -v k="$1" '$1 == k { print $2 }' "$TMP"/count/report.*
}

tries=0 failed_runs=0 ok_runs=0
declare -A messages=()

# try KIND N [CALLER]: one run with the Nth KIND call failing; fail on a defect.
try() {
    local kind=$1 n=$2 caller=${3:-} d=$TMP/try rc latest
    rm -rf "$d" && cp -r "$TMP/base" "$d"
    # shellcheck disable=SC2046
    # the shim goes into dmnist-run only, not into timeout or env
    timeout -k 5 60 env LD_PRELOAD="$SHIM" DMNIST_FAULT="$kind:$n" DMNIST_FAULT_CALLER="$caller" \
        DMNIST_FAULT_LOG="$TMP/fault.log" "$RUN" $(args "$d") >"$TMP/out" 2>"$TMP/err"
    rc=$?
    tries=$((tries + 1))
    local what="$kind:$n${caller:+ (calls from dmnist)}"
    local injected
    injected=$(tail -n 1 "$TMP/fault.log" 2>/dev/null)
    : >"$TMP/fault.log"
    report() {
        echo "  fault: ${injected:-none injected}"
        echo "  stderr:"
        sed 's/^/    | /' "$TMP/err"
        echo "  stdout (last lines):"
        tail -n 5 "$TMP/out" | sed 's/^/    | /'
        fail "$what: $*"
    }
    case $rc in
    0)
        [ -s "$TMP/err" ] && report "status 0 but stderr is not empty"
        # Every fsync and rename dmnist makes guards a checkpoint: one that
        # failed must fail the run, never leave it reporting a saved file.
        case $kind in fsync | rename) [ -n "$injected" ] && report "status 0 although a $kind call failed" ;; esac
        grep -q '^test loss' "$TMP/out" || report "status 0 without the final test loss line"
        ok_runs=$((ok_runs + 1))
        ;;
    1)
        [ "$(grep -c . "$TMP/err")" = 1 ] || report "status 1 with $(grep -c . "$TMP/err") lines on stderr, expected one"
        grep -q '^dmnist-run: ' "$TMP/err" || report "the error line does not start with 'dmnist-run: '"
        failed_runs=$((failed_runs + 1))
        messages["$(sed -E 's/[0-9]+/N/g' "$TMP/err")"]=1
        ;;
    124 | 137) report "still running after 60 s: a hang" ;;
    *) report "exit status $rc$( ((rc > 128)) && echo " (signal $((rc - 128)))") instead of 0 or 1" ;;
    esac
    [ -n "$injected" ] || [ "$n" -gt "${limit:-0}" ] || report "the shim failed no call: the walk missed it"
    local tmps
    tmps=$(ls "$d" | grep '\.tmp\.') && report "temporary checkpoint file(s) left behind: $tmps"
    latest=$("$TOOL" latest "$d" 2>&1) || report "no checkpoint to resume from: $latest"
    "$TOOL" info "$latest" >"$TMP/info" 2>&1 || { cat "$TMP/info"; report "the newest checkpoint $latest does not load"; }
    # shellcheck disable=SC2046
    timeout -k 5 60 "$RUN" $(args "$d") >"$TMP/resume.log" 2>&1 ||
        { show "$TMP/resume.log"; report "--resume from $latest (no faults) failed"; }
    grep -q "steps 12 " "$TMP/resume.log" || { show "$TMP/resume.log"; report "--resume did not reach step 12"; }
}

# walk KIND [CALLER]: every N up to the count, and one past it.
walk() {
    local kind=$1 caller=${2:-} n
    limit=$(count "$kind" "$caller")
    [ -n "$limit" ] && [ "$limit" -gt 0 ] || fail "a clean run makes no $kind call: nothing to walk"
    echo "$kind: a clean run makes $limit such calls${caller:+ from dmnist code}; failing each in turn"
    for ((n = 1; n <= limit + 1; n++)); do try "$kind" "$n" "$caller"; done
}

summary() {
    echo "$tries runs: $ok_runs finished, $failed_runs stopped with one line; the messages:"
    local m
    for m in "${!messages[@]}"; do echo "  $m"; done | sort
}

case $case in
shim)
    for bad in "fsync" "fsync:0" "nosuch:1" "fsync:2:EWHAT" "fsync:2x"; do
        out=$(env LD_PRELOAD="$SHIM" DMNIST_FAULT="$bad" /bin/true 2>&1)
        rc=$?
        [ $rc = 2 ] && [ "$(echo "$out" | wc -l)" = 1 ] && [[ $out == faultinject:* ]] ||
            fail "DMNIST_FAULT=$bad: exit $rc and '$out', expected exit 2 and one 'faultinject:' line"
    done
    out=$(cd "$TMP" && env LD_PRELOAD="$SHIM" DMNIST_FAULT=open:1 sh -c 'echo x >a; echo $?; echo y >b; echo $?' 2>&1)
    [ "$(echo "$out" | grep -cx '[0-9]*')" = 2 ] && echo "$out" | grep -qx 2 && echo "$out" | grep -qx 0 ||
        fail "open:1 did not fail only the first redirection: $out"
    [ ! -e "$TMP/a" ] && [ -e "$TMP/b" ] || fail "open:1: a exists or b does not"
    echo "$out" | grep -q 'Permission denied' || fail "open:1: not EACCES: $out"
    out=$(cd "$TMP" && env LD_PRELOAD="$SHIM" DMNIST_FAULT=open:1:ENOSPC sh -c 'echo x >c' 2>&1)
    echo "$out" | grep -q 'No space left' || fail "open:1:ENOSPC: $out"
    ok "bad DMNIST_FAULT refused with exit 2; open:1 fails exactly the first open for writing, with the errno asked"
    ;;
fsync | write | rename | open)
    walk "$case"
    summary
    ok "every failed $case call ended the run cleanly and left a loadable checkpoint"
    ;;
malloc)
    walk malloc "${DMNIST_BUILD_DIR:?}"
    summary
    ok "every failed allocation ended the run cleanly and left a loadable checkpoint"
    ;;
malloc_libc)
    # Not a ctest case yet (see the header): known failures remain.
    walk malloc libc.so
    summary
    ok "every failed allocation inside libc ended the run cleanly"
    ;;
*) echo "usage: walk.sh shim|fsync|write|rename|open|malloc|malloc_libc"; exit 2 ;;
esac
