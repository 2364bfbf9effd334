#!/usr/bin/env bash
# Tests of scripts/get-mnist.sh that never touch the network (--from only).
#
#   test_get_mnist.sh corrupt   a mirror with a corrupted file: fails, names it,
#                               leaves no bad or temporary file behind
#   test_get_mnist.sh real      a mirror of the real files: succeeds, skips
#                               files already present, repairs a damaged one
#                               (exit 77 = skipped when no real files exist)
#   test_get_mnist.sh fashion   --fashion from the Debian package's folder:
#                               copies and verifies, accepts a re-gzipped copy,
#                               refuses a damaged file and MNIST's files, finds
#                               the Debian folder by itself, and trains a few
#                               steps of configs/fashion.ini on the result
#                               (77 without dataset-fashion-mnist)
#   test_get_mnist.sh home      outside a checkout the files go to the data
#                               home ($DMNIST_DATA, else ~/.local/share/dmnist),
#                               and dmnist-run configs/cnn.ini finds them from
#                               a folder that is not the checkout; not found:
#                               every place named (77 without real MNIST)
set -euo pipefail

script="${DMNIST_SOURCE_DIR:?run through ctest}/scripts/get-mnist.sh"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-get-mnist-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# The real files: $DMNIST_MNIST_MIRROR, else the shared copy.
real_mirror=""
for dir in "${DMNIST_MNIST_MIRROR:-}" /work/shared/data/mnist "$DMNIST_SOURCE_DIR/../shared/data/mnist"; do
    if [ -n "$dir" ] && [ -f "$dir/${files[0]}" ] && [ -f "$dir/${files[1]}" ] &&
        [ -f "$dir/${files[2]}" ] && [ -f "$dir/${files[3]}" ]; then
        real_mirror="$dir"
        break
    fi
done

# Run the script; its status goes to $tmp/rc, its output to $tmp/out.
run() {
    local rc=0
    env -u DMNIST_MNIST_MIRROR "$script" "$@" >"$tmp/out" 2>&1 || rc=$?
    echo "$rc" >"$tmp/rc"
    sed 's/^/    /' "$tmp/out"
}

# No temporary file may survive a run.
no_temp_files() {
    local left
    left=$(find "$1" -name '.*.tmp.*' | head -n 1)
    [ -z "$left" ] || fail "temporary file left behind: $left"
}

case_corrupt() {
    local mirror="$tmp/mirror" dest="$tmp/dest" bad
    mkdir -p "$mirror" "$dest"
    if [ -n "$real_mirror" ]; then
        # Three good files and a damaged last one.
        for f in "${files[@]}"; do cp "$real_mirror/$f" "$mirror/$f"; done
        chmod u+w "$mirror"/*
        bad="${files[3]}"
        printf 'X' | dd of="$mirror/$bad" bs=1 seek=100 conv=notrunc status=none
        echo "mirror: real files from $real_mirror, $bad damaged"
    else
        # A tiny fake mirror: the first file is already wrong.
        for f in "${files[@]}"; do echo "not $f" >"$mirror/$f"; done
        bad="${files[0]}"
        echo "mirror: tiny fake files (no real MNIST found)"
    fi

    echo "run 1: damaged mirror"
    run --from "$mirror" --dest "$dest"
    [ "$(cat "$tmp/rc")" -ne 0 ] || fail "succeeded with a damaged $bad"
    grep -q "$bad: sha256 mismatch" "$tmp/out" || fail "message does not name $bad"
    [ ! -e "$dest/$bad" ] || fail "$dest/$bad was left behind"
    no_temp_files "$dest"
    if [ -n "$real_mirror" ]; then
        for f in "${files[@]:0:3}"; do
            cmp -s "$real_mirror/$f" "$dest/$f" || fail "$f was not copied intact"
        done
    fi

    echo "run 2: a wrong file already in --dest is deleted, not kept"
    echo "stale" >"$dest/$bad"
    run --from "$mirror" --dest "$dest"
    [ "$(cat "$tmp/rc")" -ne 0 ] || fail "succeeded with a damaged $bad"
    grep -q "$bad: checksum mismatch" "$tmp/out" || fail "stale $bad not reported"
    [ ! -e "$dest/$bad" ] || fail "stale $dest/$bad was kept"
    no_temp_files "$dest"

    echo "run 3: a file missing from the mirror"
    rm -f "$mirror/$bad"
    run --from "$mirror" --dest "$dest"
    [ "$(cat "$tmp/rc")" -ne 0 ] || fail "succeeded with $bad missing from the mirror"
    grep -q "$mirror/$bad: not found" "$tmp/out" || fail "missing $bad not named"

    echo "run 4: bad arguments"
    run --bogus
    [ "$(cat "$tmp/rc")" -eq 2 ] || fail "unknown argument gave status $(cat "$tmp/rc")"
    run --from "$tmp/no-such-mirror" --dest "$dest"
    [ "$(cat "$tmp/rc")" -ne 0 ] || fail "a missing mirror folder was accepted"
    grep -q "no-such-mirror" "$tmp/out" || fail "missing mirror folder not named"
    echo "PASS"
}

case_real() {
    if [ -z "$real_mirror" ]; then
        echo "SKIP: no real MNIST files (set DMNIST_MNIST_MIRROR to a folder holding them)"
        exit 77
    fi
    local dest="$tmp/dest"
    echo "run 1: copy from $real_mirror"
    run --from "$real_mirror" --dest "$dest"
    [ "$(cat "$tmp/rc")" -eq 0 ] || fail "failed on the real files"
    for f in "${files[@]}"; do
        cmp -s "$real_mirror/$f" "$dest/$f" || fail "$dest/$f differs from the mirror"
    done
    no_temp_files "$dest"

    echo "run 2: everything present"
    run --from "$real_mirror" --dest "$dest"
    [ "$(cat "$tmp/rc")" -eq 0 ] || fail "second run failed"
    [ "$(grep -c 'already present, checksum OK' "$tmp/out")" -eq 4 ] || fail "files fetched again"

    echo "run 3: a damaged file in --dest is fetched again"
    echo "damaged" >"$dest/${files[1]}"
    DMNIST_MNIST_MIRROR="$real_mirror" "$script" --dest "$dest" >"$tmp/out" 2>&1 ||
        fail "repair through DMNIST_MNIST_MIRROR failed: $(cat "$tmp/out")"
    sed 's/^/    /' "$tmp/out"
    cmp -s "$real_mirror/${files[1]}" "$dest/${files[1]}" || fail "${files[1]} not repaired"
    echo "PASS"
}

dmnist_run="${DMNIST_BUILD_DIR:?run through ctest}/dmnist-run"
fashion_dir="${DMNIST_FASHION_DIR:-/usr/share/datasets/fashion-mnist}"

case_fashion() {
    local f
    for f in "${files[@]}"; do
        if [ ! -f "$fashion_dir/$f" ]; then
            echo "SKIP: no Fashion-MNIST in $fashion_dir (apt-get install dataset-fashion-mnist)"
            exit 77
        fi
    done
    local dest="$tmp/fashion" mirror="$tmp/fmirror"
    echo "run 1: --fashion --from $fashion_dir"
    run --fashion --from "$fashion_dir" --dest "$dest"
    [ "$(cat "$tmp/rc")" -eq 0 ] || fail "failed on the Debian package's files"
    for f in "${files[@]}"; do
        cmp -s "$fashion_dir/$f" "$dest/$f" || fail "$dest/$f differs from the Debian file"
    done
    grep -q "Fashion-MNIST is ready in $dest" "$tmp/out" || fail "no 'ready' line"
    no_temp_files "$dest"

    echo "run 2: a re-gzipped copy holds the same data: accepted"
    mkdir -p "$mirror"
    for f in "${files[@]}"; do gzip -dc "$fashion_dir/$f" | gzip -1 -c >"$mirror/$f"; done
    cmp -s "$mirror/${files[1]}" "$fashion_dir/${files[1]}" && fail "re-gzipping did not change the bytes"
    run --fashion --from "$mirror" --dest "$tmp/regz"
    [ "$(cat "$tmp/rc")" -eq 0 ] || fail "a re-gzipped copy of the same data was refused"

    echo "run 3: a damaged file is refused, named and not kept"
    local bad="${files[1]}"
    gzip -dc "$fashion_dir/$bad" >"$tmp/labels"
    printf '\011' | dd of="$tmp/labels" bs=1 seek=1000 conv=notrunc status=none
    gzip -c "$tmp/labels" >"$mirror/$bad"
    run --fashion --from "$mirror" --dest "$tmp/bad"
    [ "$(cat "$tmp/rc")" -ne 0 ] || fail "a damaged $bad was accepted"
    grep -q "$bad: sha256 mismatch" "$tmp/out" || fail "message does not name $bad"
    [ ! -e "$tmp/bad/$bad" ] || fail "the damaged $bad was left behind"
    no_temp_files "$tmp/bad"
    echo "not gzip" >"$mirror/$bad"
    run --fashion --from "$mirror" --dest "$tmp/bad"
    [ "$(cat "$tmp/rc")" -ne 0 ] || fail "a file that is not gzip was accepted"
    grep -q "$bad: sha256 mismatch" "$tmp/out" || fail "non-gzip $bad not named"

    if [ -n "$real_mirror" ]; then
        echo "run 4: MNIST's files are not Fashion-MNIST"
        run --fashion --from "$real_mirror" --dest "$tmp/wrong"
        [ "$(cat "$tmp/rc")" -ne 0 ] || fail "MNIST's files passed as Fashion-MNIST"
        grep -q "sha256 mismatch" "$tmp/out" || fail "no checksum message for MNIST's files"
    fi

    echo "run 5: outside a checkout, without --from: the Debian folder, into the data home"
    mkdir -p "$tmp/run5" "$tmp/home5"
    local rc=0
    (cd "$tmp/run5" && env -u DMNIST_DATA -u XDG_DATA_HOME -u DMNIST_FASHION_MIRROR \
        HOME="$tmp/home5" "$script" --fashion) >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    if [ "$fashion_dir" = /usr/share/datasets/fashion-mnist ]; then
        [ "$rc" -eq 0 ] || fail "--fashion without --from failed"
        grep -q "Debian package's folder" "$tmp/out" || fail "the Debian folder was not used"
        cmp -s "$fashion_dir/${files[0]}" "$tmp/home5/.local/share/dmnist/fashion-mnist/${files[0]}" ||
            fail "not copied into the per-user data home"
    fi

    echo "run 6: a few training steps of configs/fashion.ini on the files"
    rc=0
    "$dmnist_run" "$DMNIST_SOURCE_DIR/configs/fashion.ini" --set data.path="$dest" \
        --set train.epochs=0 --set train.total_batches=20 --set train.log_every=5 \
        --metrics "$tmp/m.jsonl" >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    [ "$rc" -eq 0 ] || fail "dmnist-run configs/fashion.ini exited $rc"
    local acc
    acc=$(grep -o '"test_accuracy": *[0-9.]*' "$tmp/m.jsonl" | tail -n 1 | grep -o '[0-9.]*$')
    [ -n "$acc" ] || fail "no test_accuracy in the metrics"
    awk -v a="$acc" 'BEGIN { exit !(a > 0.3) }' ||
        fail "test accuracy $acc after 20 steps: no better than chance (images and labels apart?)"
    echo "test accuracy after 20 steps: $acc"
    echo "PASS"
}

case_home() {
    if [ -z "$real_mirror" ]; then
        echo "SKIP: no real MNIST files (set DMNIST_MNIST_MIRROR to a folder holding them)"
        exit 77
    fi
    # A folder that is not a checkout, with its own copy of the seed config.
    local run="$tmp/elsewhere" rc
    mkdir -p "$run/configs" "$tmp/h1" "$tmp/h2" "$tmp/empty"
    cp "$DMNIST_SOURCE_DIR/configs/cnn.ini" "$run/configs/cnn.ini"
    in_run() { (cd "$run" && env -u DMNIST_DATA -u XDG_DATA_HOME -u DMNIST_MNIST_MIRROR "$@"); }

    echo "run 1: not found anywhere: every place searched is named"
    rc=0
    in_run DMNIST_DATA="$tmp/none" HOME="$tmp/empty" "$dmnist_run" configs/cnn.ini 2 >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    [ "$rc" -ne 0 ] || fail "trained without data"
    local place
    for place in "$run/data/mnist (current folder)" "$run/configs/data/mnist (INI folder)" \
        "$tmp/none/mnist (\$DMNIST_DATA)" "$tmp/empty/.local/share/dmnist/mnist (per-user)"; do
        grep -qF "$place" "$tmp/out" || fail "'$place' not named"
    done

    echo "run 2: get-mnist.sh outside a checkout, HOME only: the per-user data home"
    rc=0
    in_run HOME="$tmp/h1" "$script" --from "$real_mirror" >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    [ "$rc" -eq 0 ] || fail "get-mnist.sh failed"
    grep -qF "data home $tmp/h1/.local/share/dmnist" "$tmp/out" || fail "does not say where the files go"
    cmp -s "$real_mirror/${files[0]}" "$tmp/h1/.local/share/dmnist/mnist/${files[0]}" ||
        fail "not in $tmp/h1/.local/share/dmnist/mnist"
    [ ! -e "$run/data" ] || fail "files put in the current folder"
    rc=0
    in_run HOME="$tmp/h1" "$dmnist_run" configs/cnn.ini 2 >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    [ "$rc" -eq 0 ] || fail "dmnist-run configs/cnn.ini did not find the per-user data home"

    echo "run 3: DMNIST_DATA set: the files go there and are found there"
    rc=0
    in_run DMNIST_DATA="$tmp/dd" HOME="$tmp/h2" "$script" --from "$real_mirror" >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    [ "$rc" -eq 0 ] || fail "get-mnist.sh failed"
    [ -f "$tmp/dd/mnist/${files[3]}" ] || fail "not in \$DMNIST_DATA/mnist"
    [ ! -e "$tmp/h2/.local" ] || fail "also written to the per-user folder"
    rc=0
    in_run DMNIST_DATA="$tmp/dd" HOME="$tmp/empty" "$dmnist_run" configs/cnn.ini 2 >"$tmp/out" 2>&1 || rc=$?
    sed 's/^/    /' "$tmp/out"
    [ "$rc" -eq 0 ] || fail "dmnist-run configs/cnn.ini did not find \$DMNIST_DATA/mnist"

    echo "run 4: from the top of a checkout the default stays data/mnist"
    local co="$tmp/checkout"
    mkdir -p "$co/scripts" "$co/include/dmnist"
    touch "$co/CMakeLists.txt" "$co/scripts/get-mnist.sh"
    rc=0
    (cd "$co" && DMNIST_DATA="$tmp/dd2" "$script" --from "$real_mirror") >"$tmp/out" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] && [ -f "$co/data/mnist/${files[0]}" ] && [ ! -e "$tmp/dd2" ] ||
        fail "in a checkout the files did not go to data/mnist: $(cat "$tmp/out")"
    echo "PASS"
}

case "${1:-}" in
    corrupt) case_corrupt ;;
    real) case_real ;;
    fashion) case_fashion ;;
    home) case_home ;;
    *)
        echo "usage: $0 corrupt|real|fashion|home" >&2
        exit 2
        ;;
esac
