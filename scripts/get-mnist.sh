#!/usr/bin/env bash
# Fetch the four original MNIST .gz files into a folder and verify them.
#
#   scripts/get-mnist.sh [--from DIR] [--dest DIR]
#
#   --from DIR   copy from a local mirror folder instead of downloading
#                (default: $DMNIST_MNIST_MIRROR when set)
#   --dest DIR   where the files go (default: data/mnist)
#
# Without a mirror the files are downloaded (curl or wget) from public
# mirrors, trying each in turn. Every file is checked against the sha256
# sums below; a file that does not match is deleted and the script fails
# naming it. Files already present and correct are left alone. Each file is
# written to a temporary name and renamed only once it has been verified.
set -euo pipefail

readonly MIRRORS=(
    "https://ossci-datasets.s3.amazonaws.com/mnist/"
    "https://storage.googleapis.com/cvdf-datasets/mnist/"
)

# sha256 of the original files (as in yann.lecun.com/exdb/mnist).
readonly SHA256SUMS="\
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz"

prog=$(basename "$0")

die() {
    echo "$prog: $*" >&2
    exit 1
}

usage() {
    echo "usage: $prog [--from DIR] [--dest DIR]" >&2
    exit 2
}

from="${DMNIST_MNIST_MIRROR:-}"
dest="data/mnist"
while [ $# -gt 0 ]; do
    case "$1" in
        --from)
            [ $# -ge 2 ] || usage
            from="$2"
            shift 2
            ;;
        --dest)
            [ $# -ge 2 ] || usage
            dest="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,14s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "$prog: unknown argument '$1'" >&2
            usage
            ;;
    esac
done

command -v sha256sum >/dev/null || die "sha256sum not found (install coreutils)"
if [ -n "$from" ] && [ ! -d "$from" ]; then
    die "mirror folder '$from' does not exist"
fi
mkdir -p "$dest"

# Prints the sha256 of a file.
sha_of() {
    sha256sum "$1" | cut -d' ' -f1
}

# Fetch URL to FILE with whichever client is installed.
download() {
    local url="$1" out="$2"
    if command -v curl >/dev/null; then
        curl -fsSL --retry 2 --connect-timeout 20 -o "$out" "$url"
    elif command -v wget >/dev/null; then
        wget -q --tries=2 --timeout=20 -O "$out" "$url"
    else
        die "neither curl nor wget is installed; use --from DIR with a local copy"
    fi
}

# Put one verified file at $dest/$name.
fetch_one() {
    local name="$1" want="$2"
    local target="$dest/$name"
    local tmp="$dest/.$name.tmp.$$"

    if [ -f "$target" ]; then
        if [ "$(sha_of "$target")" = "$want" ]; then
            echo "$target: already present, checksum OK"
            return 0
        fi
        echo "$target: checksum mismatch, fetching again" >&2
    fi

    rm -f "$tmp"
    local src
    if [ -n "$from" ]; then
        src="$from/$name"
        [ -f "$src" ] || die "$src: not found in the mirror folder"
        cat "$src" >"$tmp"
    else
        local base ok=0
        for base in "${MIRRORS[@]}"; do
            echo "downloading $base$name"
            if download "$base$name" "$tmp"; then
                src="$base$name"
                ok=1
                break
            fi
            echo "$prog: $base$name: download failed, trying the next mirror" >&2
        done
        if [ "$ok" -ne 1 ]; then
            rm -f "$tmp"
            die "$name: could not be downloaded from any mirror (offline? use --from DIR)"
        fi
    fi

    local got
    got=$(sha_of "$tmp")
    if [ "$got" != "$want" ]; then
        rm -f "$tmp" "$target"
        die "$name: sha256 mismatch (from $src: got $got, expected $want); file deleted"
    fi
    mv -f "$tmp" "$target"
    echo "$target: OK"
}

# Remove a temporary file left by an interrupted run of this process.
cleanup() {
    rm -f "$dest"/.*.tmp."$$"
}
trap cleanup EXIT

while read -r sum name; do
    fetch_one "$name" "$sum"
done <<<"$SHA256SUMS"

echo "MNIST is ready in $dest"
