#!/usr/bin/env bash
# Tests of scripts/get-mnist.sh that never touch the network (--from only).
#
#   test_get_mnist.sh corrupt   a mirror with a corrupted file: fails, names it,
#                               leaves no bad or temporary file behind
#   test_get_mnist.sh real      a mirror of the real files: succeeds, skips
#                               files already present, repairs a damaged one
#                               (exit 77 = skipped when no real files exist)
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

case "${1:-}" in
    corrupt) case_corrupt ;;
    real) case_real ;;
    *)
        echo "usage: $0 corrupt|real" >&2
        exit 2
        ;;
esac
