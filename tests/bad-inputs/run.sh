#!/usr/bin/env bash
# run.sh [CASE...]: run the bad-input corpus (every folder under cases/, or
# the ones named) and judge each case.
#
# A case is a folder holding a file `case` and whatever small files it needs:
#
#   # what the case is about (comment lines start with #)
#   setup: cp -r "$FIX/ck" ck && poke ck/ckpt-0000000002.dmck 0 'X'   (optional)
#   cmd: $RUN --resume --set train.checkpoint_dir=ck "$FIX/base.ini" 4
#   exit: 1
#   message: ck/ckpt-0000000002\.dmck: not a dmnist checkpoint \(bad magic\)
#   requires: root    (optional: skipped unless run as root, e.g. to act as
#                      another user with `runuser -u nobody -- ...`)
#
# The case runs in a scratch copy of its folder: `setup` first (it must
# succeed), then `cmd` under bash with a time limit. It passes when
#  - cmd exits with `exit` (not killed by a signal, not timed out),
#  - stderr is exactly one line, matching the extended regex `message`,
#  - neither output mentions a sanitizer report, and
#  - the scratch folder holds the same files after cmd as before it (no
#    partial output left behind).
#
# cmd and setup see: $RUN (dmnist-run), $FIX (fixtures: base.ini and
# mnist.ini, data/ with four small valid IDX files, ck/ with a checkpoint of
# base.ini at step 2), $BAD (the bad plugins, one folder each), and the
# helpers below (mkidx, fill_idx, poke, put_u32, put_u64).
set -u
here=$(cd "$(dirname "$0")" && pwd)
RUN=${DMNIST_RUN:?DMNIST_RUN must name dmnist-run}
BAD=${DMNIST_BAD_PLUGINS:?DMNIST_BAD_PLUGINS must name the bad plugin folder}
LIMIT=${DMNIST_BAD_INPUT_LIMIT:-30}
W=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-bad.XXXXXX") || exit 1
trap 'rm -rf "$W"' EXIT
# Others may enter (not list or write) the work folder, so a case can act
# as another user (runuser -u nobody) inside its scratch folder.
chmod 0711 "$W"
mkdir -m 0755 "$W/cases" "$W/logs"
FIX=$W/fixtures
export RUN BAD FIX

# ---- helpers for setup and cmd -------------------------------------------

# be32 N: N as 4 big-endian bytes (IDX headers).
be32() { printf "\\$(printf %03o $(($1 >> 24 & 255)))\\$(printf %03o $(($1 >> 16 & 255)))\\$(printf %03o $(($1 >> 8 & 255)))\\$(printf %03o $(($1 & 255)))"; }
# le BYTES N: N as BYTES little-endian bytes (checkpoint fields).
le() { local i; for ((i = 0; i < $1; i++)); do printf "\\$(printf %03o $(($2 >> (8 * i) & 255)))"; done; }
# mkidx FILE MAGIC COUNT ROWS COLS BODY_BYTES (ROWS COLS "-" for labels):
# an IDX header followed by BODY_BYTES bytes of value 1.
mkidx() {
    { be32 "$2"; be32 "$3"; [ "$4" != - ] && { be32 "$4"; be32 "$5"; }
      head -c "$6" /dev/zero | tr '\0' '\1'; } >"$1"
}
# fill_idx: copy the valid fixture files whose name (plain or .gz) is absent here.
fill_idx() {
    local f
    for f in "$FIX"/data/*; do
        f=${f##*/}
        [ -e "$f" ] || [ -e "$f.gz" ] || cp "$FIX/data/$f" .
    done
}
# poke FILE OFFSET TEXT: overwrite bytes in place (TEXT takes printf escapes).
poke() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
put_u32() { le 4 "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
put_u64() { le 8 "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
export -f be32 le mkidx fill_idx poke put_u32 put_u64

# ---- fixtures ----------------------------------------------------------------

mkdir -p "$FIX/data"
cp "$here/fixtures/"*.ini "$FIX/"
(
    cd "$FIX/data" || exit 1
    mkidx train-images-idx3-ubyte 2051 2 28 28 $((2 * 784))
    mkidx train-labels-idx1-ubyte 2049 2 - - 2
    mkidx t10k-images-idx3-ubyte 2051 1 28 28 784
    mkidx t10k-labels-idx1-ubyte 2049 1 - - 1
) || { echo "FAIL: cannot make the IDX fixtures"; exit 1; }
if ! "$RUN" --set train.checkpoint_dir="$FIX/ck" "$FIX/base.ini" 2 >"$W/fixture.log" 2>&1; then
    cat "$W/fixture.log"
    echo "FAIL: the fixture run of base.ini failed"
    exit 1
fi
if ! (cd "$FIX/data" && "$RUN" --dry-run "$FIX/mnist.ini" >"$W/fixture.log" 2>&1); then
    cat "$W/fixture.log"
    echo "FAIL: mnist.ini does not accept the fixture IDX files"
    exit 1
fi

# ---- the cases -----------------------------------------------------------------

# field NAME FILE: the value of "NAME: value" in a case file.
field() { sed -n "s/^$1: //p" "$2" | head -n 1; }

run_case() {
    local dir=$1 name=${1##*/} scratch=$W/cases/${1##*/} logs=$W/logs/${1##*/}
    local setup cmd want_exit want_msg rc lines msg before after
    [ -f "$dir/case" ] || { echo "FAIL $name: no case file"; return 1; }
    if [ "$(field requires "$dir/case")" = root ] && [ "$(id -u)" != 0 ]; then
        echo "skip $name: needs root"
        return 0
    fi
    setup=$(field setup "$dir/case")
    cmd=$(field cmd "$dir/case")
    want_exit=$(field exit "$dir/case")
    want_msg=$(field message "$dir/case")
    [ -n "$cmd" ] && [ -n "$want_exit" ] && [ -n "$want_msg" ] ||
        { echo "FAIL $name: the case file needs cmd:, exit: and message:"; return 1; }
    mkdir -p "$scratch" "$logs"
    chmod 0755 "$scratch"
    cp -a "$dir/." "$scratch/"
    rm "$scratch/case"
    if [ -n "$setup" ] && ! (cd "$scratch" && bash -c "$setup") >"$logs/setup" 2>&1; then
        echo "FAIL $name: setup failed: $(cat "$logs/setup")"
        return 1
    fi
    before=$(cd "$scratch" && find . -printf '%p %y %s\n' | sort)
    (cd "$scratch" && exec timeout -k 5 "$LIMIT" bash -c "$cmd") >"$logs/out" 2>"$logs/err" </dev/null
    rc=$?
    after=$(cd "$scratch" && find . -printf '%p %y %s\n' | sort)
    msg=$(cat "$logs/err")
    lines=$(grep -c . "$logs/err")
    local bad=
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        bad="hung: still running after $LIMIT s"
    elif [ $rc -gt 128 ]; then
        bad="killed by signal $((rc - 128))"
    elif grep -Eq 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|Segmentation fault|core dumped' \
        "$logs/out" "$logs/err"; then
        bad="sanitizer or crash report in the output"
    elif [ "$rc" != "$want_exit" ]; then
        bad="exit $rc, expected $want_exit"
    elif [ "$lines" != 1 ]; then
        bad="$lines lines on stderr, expected one"
    elif ! grep -Eq -- "$want_msg" "$logs/err"; then
        bad="message does not match /$want_msg/"
    elif [ "$before" != "$after" ]; then
        bad="files changed: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | tr '\n' ' ')"
    fi
    if [ -n "$bad" ]; then
        echo "FAIL $name: $bad"
        echo "  cmd:    $cmd"
        sed 's/^/  stderr: /' "$logs/err" | head -n 20
        return 1
    fi
    echo "ok   $name: $msg"
    return 0
}

cases=()
if [ $# -gt 0 ]; then
    for c in "$@"; do cases+=("$here/cases/$c"); done
else
    for c in "$here"/cases/*/; do cases+=("${c%/}"); done
fi
failed=()
for c in "${cases[@]}"; do
    run_case "$c" || failed+=("${c##*/}")
done
echo "bad inputs: $((${#cases[@]} - ${#failed[@]})) of ${#cases[@]} cases passed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
exit 0
