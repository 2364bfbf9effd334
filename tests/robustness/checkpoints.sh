#!/usr/bin/env bash
# Checkpoints that must be refused, and writers killed half-way.
#
#   ckpt_refused         a flipped byte, a truncated file, a wrong magic, a wrong
#                        version, another model and another optimizer: --resume
#                        stops with exit 1 and one line that says which, and
#                        writes nothing
#   ckpt_refused_gloo    the same refusal with 2 ranks ends both quickly, rank 1
#                        pointing at rank 0's message
#   ckpt_kill_mid_write  SIGKILL while step 20's checkpoint is half written (a
#                        test hook pauses the writer there): step 10 stays the
#                        latest and readable, the partial file is never picked,
#                        and resuming gives the uninterrupted run's bits
#   ckpt_kill_loop       SIGKILL at random moments of a run that checkpoints
#                        every step: the latest checkpoint is always readable
source "$(dirname "$0")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini

# refused NAME WANT_SUBSTRING [dmnist-run args]: --resume from $TMP/NAME must fail.
refused() {
    local name=$1 want=$2 before after
    shift 2
    before=$(ls "$TMP/$name")
    run_fails "$TMP/$name.log" 1 "$RUN" --resume --set train.checkpoint_dir="$TMP/$name" "$@" "$CFG" 40
    grep -qF -- "$want" "$TMP/$name.log" || { cat "$TMP/$name.log"; fail "$name: message lacks '$want'"; }
    grep -qF "$(ckpt "$TMP/$name" 10)" "$TMP/$name.log" || { cat "$TMP/$name.log"; fail "$name: message does not name the file"; }
    [ "$(grep -c '^dmnist-run: ' "$TMP/$name.log")" = 1 ] || { cat "$TMP/$name.log"; fail "$name: not one error line"; }
    grep -q '^checkpoint: ' "$TMP/$name.log" && fail "$name: a checkpoint was written after the refusal"
    after=$(ls "$TMP/$name")
    [ "$before" = "$after" ] || fail "$name: the checkpoint folder changed"
    echo "ok $name: $(grep '^dmnist-run: ' "$TMP/$name.log")"
}

# variant NAME: a copy of the good checkpoint folder to break.
variant() { cp -r "$TMP/good" "$TMP/$1"; echo "$(ckpt "$TMP/$1" 10)"; }

# poke FILE OFFSET BYTES...: overwrite bytes in place (octal escapes for printf).
poke() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }

make_good() { run_ok "$TMP/good.log" "$RUN" --set train.checkpoint_dir="$TMP/good" "$CFG" 10; }

case ${1:-} in
ckpt_refused)
    make_good
    f=$(variant flipped)
    # one bit in the middle of the parameters
    b=$(od -An -tu1 -j 1000 -N1 "$f" | tr -d ' ')
    poke "$f" 1000 "$(printf '\\%03o' $((b ^ 4)))"
    refused flipped "checksum mismatch: the checkpoint is corrupt"
    f=$(variant truncated)
    truncate -s -100 "$f"
    refused truncated "truncated or padded checkpoint"
    f=$(variant stub)
    truncate -s 40 "$f"
    refused stub "truncated checkpoint (40 bytes)"
    f=$(variant magic)
    poke "$f" 0 'NOTDMNST'
    refused magic "not a dmnist checkpoint (bad magic)"
    f=$(variant version)
    poke "$f" 8 '\011\000\000\000'
    refused version "checkpoint format version 9 is not supported"
    variant model >/dev/null
    refused model "written for a different model or optimizer" --set layer.conv1.filters=8
    variant optimizer >/dev/null
    refused optimizer "written for a different model or optimizer" --set optimizer.type=sgd
    variant seed >/dev/null
    refused seed "checkpoint used seed 7, this config seed 9" --set experiment.seed=9
    # the good one still resumes (so the refusals above were about the damage)
    run_ok "$TMP/good2.log" "$RUN" --resume --set train.checkpoint_dir="$TMP/good" "$CFG" 20
    ok "every damaged checkpoint refused; the intact one resumes"
    ;;
ckpt_refused_gloo)
    has_plugin gloo || skip "no gloo backend plugin"
    make_good
    f=$(variant flipped)
    poke "$f" 2000 '\377\377\377\377'
    start=$SECONDS
    run_fails "$TMP/g.log" 1 "$RUN" --np 2 --resume --set experiment.backend=gloo --set experiment.timeout_s=20 \
        --set train.checkpoint_dir="$TMP/flipped" "$CFG" 40
    took=$((SECONDS - start))
    grep -q '^\[rank 0\] dmnist-run: .*checksum mismatch' "$TMP/g.log" || { cat "$TMP/g.log"; fail "rank 0 did not name the damage"; }
    grep -q '^\[rank 1\] dmnist-run: rank 0 could not read the checkpoint' "$TMP/g.log" ||
        { cat "$TMP/g.log"; fail "rank 1 did not point at rank 0"; }
    grep -q '^dmnist-run: rank 0 failed (exit 1)' "$TMP/g.log" || { cat "$TMP/g.log"; fail "the launcher did not blame rank 0"; }
    grep -q '^dmnist-run: rank 1 failed' "$TMP/g.log" && { cat "$TMP/g.log"; fail "the launcher blamed rank 1, which only followed rank 0"; }
    [ $took -lt 15 ] || fail "the job took $took s to stop (timeout 20 s: it waited instead of being told)"
    ok "2 ranks refuse a corrupt checkpoint together in $took s"
    ;;
ckpt_kill_mid_write)
    run_ok "$TMP/straight.log" "$RUN" --set train.checkpoint_dir="$TMP/straight" "$CFG" 40
    DMNIST_TEST_CKPT_PAUSE_STEP=20 "$RUN" --set train.checkpoint_dir="$TMP/k" --set train.checkpoint_every=10 \
        "$CFG" 40 >"$TMP/k.log" 2>&1 &
    pid=$!
    on_exit "kill -KILL $pid 2>/dev/null"
    wait_for_line "$TMP/k.log" 'test hook: paused while writing' 30 $pid || fail "the writer never reached the pause"
    kill -KILL $pid
    wait $pid 2>/dev/null
    partial=$(ls "$TMP/k" | grep '^ckpt-0000000020\.dmck\.tmp\.') || fail "no partial file: the hook did not pause mid-write"
    [ -e "$(ckpt "$TMP/k" 20)" ] && fail "a step-20 checkpoint exists although its writer was killed"
    [ "$("$TOOL" latest "$TMP/k")" = "$(ckpt "$TMP/k" 10)" ] || fail "resume would not pick step 10"
    "$TOOL" info "$(ckpt "$TMP/k" 10)" >/dev/null || fail "step 10 is unreadable"
    echo "killed mid-write: left $partial ($(stat -c %s "$TMP/k/$partial") bytes), latest is step 10"
    run_ok "$TMP/k2.log" "$RUN" --resume --set train.checkpoint_dir="$TMP/k" --set train.checkpoint_every=10 "$CFG" 40
    grep -q "resuming from $(ckpt "$TMP/k" 10) (step 10" "$TMP/k2.log" || { cat "$TMP/k2.log"; fail "did not resume from step 10"; }
    "$TOOL" same "$(ckpt "$TMP/straight" 40)" "$(ckpt "$TMP/k" 40)" || fail "crash + resume differs from the straight run"
    [ -e "$TMP/k/$partial" ] && fail "the dead writer's partial file is still there after the next write"
    ok "a kill mid-write loses nothing: resumed from step 10, final bits equal the straight run, partial file removed"
    ;;
ckpt_kill_loop)
    dir=$TMP/loop
    kills=0 last=-1
    for i in $(seq 12); do
        resume=()
        "$TOOL" latest "$dir" >/dev/null 2>&1 && resume=(--resume)
        "$RUN" "${resume[@]}" --set train.checkpoint_dir="$dir" --set train.checkpoint_every=1 \
            --set train.keep_checkpoints=2 "$CFG" 1000000 >"$TMP/loop$i.log" 2>&1 &
        pid=$!
        sleep "0.$((RANDOM % 6 + 2))$((RANDOM % 10))"
        kill -KILL $pid 2>/dev/null && kills=$((kills + 1))
        wait $pid 2>/dev/null
        latest=$("$TOOL" latest "$dir" 2>/dev/null) || continue
        step=$(field "$latest" step) || fail "kill $i: latest checkpoint $latest is unreadable"
        [ -n "$step" ] || fail "kill $i: latest checkpoint $latest is unreadable"
        [ "$step" -ge "$last" ] || fail "kill $i: latest step went back from $last to $step"
        last=$step
        n=$(ls "$dir" | grep -c '\.dmck$')
        [ "$n" -le 3 ] || fail "kill $i: $n checkpoints kept, keep_checkpoints = 2"
    done
    [ "$last" -gt 0 ] || fail "no checkpoint was ever written"
    ok "$kills kills at random moments: the latest checkpoint was always readable (reached step $last)"
    ;;
ckpt_foreign_names)
    # Files that only look like checkpoints, a symlink, another experiment's
    # checkpoint and an earlier, longer run's: retention must delete none of
    # them, count none of them, and keep exactly its own newest files.
    make_good
    dir=$TMP/mixed
    mkdir "$dir"
    good=$(ckpt "$TMP/good" 10)
    for name in ckpt-0000000900-best1.dmck ckpt-0000000900.dmck.bak ckpt-900.dmck ckpt-00000009000.dmck \
        ckpt-000000090a.dmck Ckpt-0000000900.dmck ckpt-0000000900.DMCK ckpt-+000000900.dmck ckpt--000000001.dmck \
        'ckpt-0000000900.dmck ' ckpt-0000000900.dmck.tmp.1; do
        cp "$good" "$dir/$name"
    done
    ln -s "$good" "$dir/ckpt-0000000002.dmck"                       # a symlink with an exact name
    mkdir "$dir/ckpt-0000000001.dmck"                               # a folder with an exact name
    run_ok "$TMP/other.log" "$RUN" --set train.checkpoint_dir="$TMP/other" --set layer.conv1.filters=8 "$CFG" 3
    cp "$(ckpt "$TMP/other" 3)" "$(ckpt "$dir" 3)"                  # another model's checkpoint
    cp "$(ckpt "$TMP/good" 10)" "$(ckpt "$dir" 5000)"               # a later step of this experiment
    printf 'not a checkpoint' >"$(ckpt "$dir" 4)"
    before=$(cd "$dir" && find . -mindepth 1 -printf '%p %y %s\n' | sort)
    run_ok "$TMP/mixed.log" "$RUN" --set train.checkpoint_dir="$dir" --set train.checkpoint_every=5 \
        --set train.keep_checkpoints=2 "$CFG" 20
    after=$(cd "$dir" && find . -mindepth 1 -printf '%p %y %s\n' | sort)
    gone=$(comm -23 <(echo "$before") <(echo "$after"))
    [ -z "$gone" ] || fail "retention deleted files that are not its own: $gone"
    own=$(comm -13 <(echo "$before") <(echo "$after") | awk '{print $1}' | tr '\n' ' ')
    [ "$own" = "./ckpt-0000000015.dmck ./ckpt-0000000020.dmck " ] ||
        { cat "$TMP/mixed.log"; fail "kept '$own', expected steps 15 and 20 (keep_checkpoints = 2)"; }
    grep -q "^checkpoint: $(ckpt "$dir" 20) (step 20)" "$TMP/mixed.log" || { cat "$TMP/mixed.log"; fail "no checkpoint line"; }
    "$TOOL" same "$(ckpt "$TMP/good" 10)" "$(ckpt "$dir" 5000)" || fail "the later run's checkpoint changed"
    # resume reads the newest exact name (step 5000 here): with it moved away, step 20
    mv "$(ckpt "$dir" 5000)" "$TMP/later.dmck"
    run_ok "$TMP/mixed2.log" "$RUN" --resume --set train.checkpoint_dir="$dir" "$CFG" 25
    grep -q "resuming from $(ckpt "$dir" 20) (step 20" "$TMP/mixed2.log" || { cat "$TMP/mixed2.log"; fail "did not resume from step 20"; }
    ok "11 look-alike names, a symlink, a folder, another model's and a later run's checkpoint: none deleted or counted; kept steps 15 and 20"
    ;;
ckpt_impossible_fields)
    # A valid checksum over impossible header fields (ckpt_tool set rewrites
    # one field and recomputes the CRC): each refused with one line.
    make_good
    try() { # NAME FIELD VALUE WANT
        local f
        f=$(variant "$1")
        "$TOOL" set "$f" "$2" "$3" || fail "ckpt_tool set $2 $3 failed"
        refused "$1" "$4"
    }
    try negpos epoch_pos -1 "corrupt checkpoint header"
    try bigpos epoch_pos 2001 "epoch position 2001 is outside this data set's 2000 training examples"
    try negstep step -5 "corrupt checkpoint header"
    try hugestep step 10000000000 "corrupt checkpoint header"
    try negepoch epoch -1 "corrupt checkpoint header"
    try epochstep epoch 11 "corrupt checkpoint header"
    try world world_size 0 "corrupt checkpoint header"
    ok "7 impossible header fields behind a valid checksum refused"
    ;;
*) echo "usage: checkpoints.sh ckpt_refused|ckpt_refused_gloo|ckpt_kill_mid_write|ckpt_kill_loop|ckpt_foreign_names|ckpt_impossible_fields"; exit 2 ;;
esac
