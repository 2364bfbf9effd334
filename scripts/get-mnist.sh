#!/usr/bin/env bash
# Fetch the four MNIST (or Fashion-MNIST) .gz files into a folder and verify them.
#
#   scripts/get-mnist.sh [--fashion] [--from DIR] [--dest DIR]
#
#   --fashion    Fashion-MNIST (Zalando) instead of MNIST: the same four file
#                names and IDX format
#   --from DIR   copy from a local mirror folder instead of downloading
#                (default: $DMNIST_MNIST_MIRROR, with --fashion
#                $DMNIST_FASHION_MIRROR, else for Fashion-MNIST the Debian
#                package's folder /usr/share/datasets/fashion-mnist when it
#                holds the files)
#   --dest DIR   where the files go. Default: data/mnist (data/fashion-mnist)
#                when run from the top of a dmnist checkout; anywhere else the
#                data home, where dmnist-run finds them from any folder:
#                $DMNIST_DATA/mnist when DMNIST_DATA is set, else
#                ${XDG_DATA_HOME:-~/.local/share}/dmnist/mnist (.../fashion-mnist)
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
readonly MNIST_SHA256SUMS="\
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz"

# Fashion-MNIST: Keras's copy of Zalando's files (the original S3 site is http only).
readonly FASHION_MIRRORS=(
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
)
readonly FASHION_DEBIAN_DIR=/usr/share/datasets/fashion-mnist

# sha256 of the decompressed IDX data of Fashion-MNIST, measured on Debian's
# dataset-fashion-mnist 0.0~git20200523.55506a9-1. Its .gz files are not
# byte for byte Zalando's (their gzip headers carry no file name, so their
# sizes and sums differ from the ones Zalando publishes), so for Fashion-MNIST
# the data inside the gzip stream is checked, which any faithful copy passes.
readonly FASHION_SHA256SUMS="\
c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888  train-images-idx3-ubyte.gz
bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9  train-labels-idx1-ubyte.gz
5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b  t10k-images-idx3-ubyte.gz
0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34  t10k-labels-idx1-ubyte.gz"

prog=$(basename "$0")

die() {
    echo "$prog: $*" >&2
    exit 1
}

usage() {
    echo "usage: $prog [--fashion] [--from DIR] [--dest DIR]" >&2
    exit 2
}

fashion=0
from=""
from_set=0
dest=""
while [ $# -gt 0 ]; do
    case "$1" in
        --fashion)
            fashion=1
            shift
            ;;
        --from)
            [ $# -ge 2 ] || usage
            from="$2"
            from_set=1
            shift 2
            ;;
        --dest)
            [ $# -ge 2 ] || usage
            dest="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,26s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "$prog: unknown argument '$1'" >&2
            usage
            ;;
    esac
done

if [ $fashion = 1 ]; then
    what="Fashion-MNIST" sub="fashion-mnist" sums="$FASHION_SHA256SUMS"
    checked=", of the decompressed data"
    mirrors=("${FASHION_MIRRORS[@]}")
    [ $from_set = 1 ] || from="${DMNIST_FASHION_MIRROR:-}"
    if [ $from_set = 0 ] && [ -z "$from" ] && [ -f "$FASHION_DEBIAN_DIR/train-images-idx3-ubyte.gz" ]; then
        from="$FASHION_DEBIAN_DIR"
        echo "copying from the Debian package's folder $from"
    fi
else
    what="MNIST" sub="mnist" sums="$MNIST_SHA256SUMS" checked=""
    mirrors=("${MIRRORS[@]}")
    [ $from_set = 1 ] || from="${DMNIST_MNIST_MIRROR:-}"
fi

# The default destination: the checkout's data/ folder when run from the top
# of a checkout, else the data home that dmnist-run searches (docs/datasets.md).
if [ -z "$dest" ]; then
    if [ -f scripts/get-mnist.sh ] && [ -d include/dmnist ] && [ -f CMakeLists.txt ]; then
        dest="data/$sub"
    else
        if [ -n "${DMNIST_DATA:-}" ]; then
            home="$DMNIST_DATA" why="\$DMNIST_DATA"
        elif [ "$(printf %.1s "${XDG_DATA_HOME:-}")" = / ]; then
            home="$XDG_DATA_HOME/dmnist" why="per-user data home, \$XDG_DATA_HOME/dmnist"
        else
            [ -n "${HOME:-}" ] || die "neither DMNIST_DATA nor HOME is set: use --dest DIR"
            home="$HOME/.local/share/dmnist" why="per-user data home"
        fi
        dest="$home/$sub"
        echo "not in a dmnist checkout: the files go to the data home $home ($why)"
    fi
fi

command -v sha256sum >/dev/null || die "sha256sum not found (install coreutils)"
if [ $fashion = 1 ]; then command -v gzip >/dev/null || die "gzip not found (install gzip)"; fi
if [ -n "$from" ] && [ ! -d "$from" ]; then
    die "mirror folder '$from' does not exist"
fi
mkdir -p "$dest"

# Prints the sha256 of a file (Fashion-MNIST: of the data inside its gzip
# stream; a file that is not valid gzip prints "not-gzip").
sha_of() {
    if [ $fashion = 1 ]; then
        local sum
        if sum=$(set -o pipefail; gzip -dc <"$1" 2>/dev/null | sha256sum | cut -d' ' -f1); then
            echo "$sum"
        else
            echo "not-gzip"
        fi
    else
        sha256sum "$1" | cut -d' ' -f1
    fi
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
        for base in "${mirrors[@]}"; do
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
        die "$name: sha256 mismatch (from $src: got $got, expected $want$checked); file deleted"
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
done <<<"$sums"

echo "$what is ready in $dest"
