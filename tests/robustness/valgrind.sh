#!/usr/bin/env bash
# valgrind_train: short end-to-end training runs (local backend, one
# thread, checkpoint written and resumed, evaluation; then the seed CNN's convolutions on
# synthetic data for two steps) under valgrind's
# memcheck: no invalid read or write, no use of uninitialised values, no
# definitely lost memory. Skipped without valgrind, and in sanitizer builds
# (ASan and valgrind cannot share a process).
source "$(dirname "$0")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini

case ${1:-} in
valgrind_train)
    command -v valgrind >/dev/null || skip "valgrind is not installed (apt-get install valgrind)"
    if ldd "$RUN" | grep -q 'libasan'; then skip "sanitizer build: valgrind cannot run ASan binaries"; fi
    vg=(valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
        --show-leak-kinds=definite --num-callers=30 --log-file="$TMP/vg.%p.log"
        --suppressions="$SRC/tests/cuda/valgrind-ld.supp") # the loader on CUDA libraries
    # Everything runs tens of times slower under memcheck: no bound on plugin loading.
    export DMNIST_PLUGIN_LOAD_TIMEOUT_S=0
    args=(--set experiment.threads=1 --set data.train_size=256 --set data.test_size=64
          --set train.checkpoint_dir="$TMP/ck" --set train.log_every=2)
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout -k 5 500 "${vg[@]}" "$RUN" "${args[@]}" "$CFG" 6 >"$TMP/a.log" 2>&1
    rc=$?
    cat "$TMP/a.log"
    [ $rc = 0 ] || { cat "$TMP"/vg.*.log; fail "valgrind run exited with $rc (99: memcheck found errors)"; }
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout -k 5 500 "${vg[@]}" "$RUN" --resume "${args[@]}" "$CFG" 10 >"$TMP/b.log" 2>&1
    rc=$?
    cat "$TMP/b.log"
    [ $rc = 0 ] || { cat "$TMP"/vg.*.log; fail "valgrind run with --resume exited with $rc (99: memcheck found errors)"; }
    # the seed CNN's convolutions (32 and 64 filters; a narrower dense) for two steps
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout -k 5 500 "${vg[@]}" "$RUN" --set experiment.threads=1 \
        --set data.train_size=64 --set data.test_size=8 --set data.batch_size=4 --set layer.dense1.units=32 \
        "$SRC/configs/cnn-synthetic.ini" 2 \
        >"$TMP/c.log" 2>&1
    rc=$?
    cat "$TMP/c.log"
    [ $rc = 0 ] || { cat "$TMP"/vg.*.log; fail "valgrind run of the seed CNN exited with $rc (99: memcheck found errors)"; }
    grep -h 'ERROR SUMMARY' "$TMP"/vg.*.log
    # one summary per process: the three runs, and the plugin probe's child of each (a fork stays under memcheck)
    [ "$(grep -h 'ERROR SUMMARY' "$TMP"/vg.*.log | wc -l)" -ge 3 ] || fail "fewer than 3 memcheck summaries"
    grep -h 'ERROR SUMMARY' "$TMP"/vg.*.log | grep -qv 'ERROR SUMMARY: 0 errors' && fail "memcheck reported errors"
    ok "training, checkpointing, resuming and evaluating are clean under valgrind"
    ;;
*) echo "usage: valgrind.sh valgrind_train"; exit 2 ;;
esac
