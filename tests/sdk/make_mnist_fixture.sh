#!/usr/bin/env bash
# make_mnist_fixture.sh DIR: a tiny MNIST in the IDX format (32 training and
# 16 test images of 28x28, labels 0..9 in turn), for checking the mnist
# dataset plugin without the real files.
set -euo pipefail
dir=${1:?usage: make_mnist_fixture.sh DIR}
mkdir -p "$dir"

byte() { printf "\\$(printf %03o "$1")"; }
be32() { byte $(( ($1 >> 24) & 255 )); byte $(( ($1 >> 16) & 255 )); byte $(( ($1 >> 8) & 255 )); byte $(( $1 & 255 )); }

write_split() { # prefix count
    local prefix=$1 n=$2 i
    {
        be32 2051; be32 "$n"; be32 28; be32 28       # magic 0x00000803: ubyte images
        for ((i = 0; i < n; i++)); do
            head -c 784 /dev/zero | tr '\0' "\\$(printf %03o $(( (i * 37) % 256 )))"
        done
    } > "$dir/$prefix-images-idx3-ubyte"
    {
        be32 2049; be32 "$n"                          # magic 0x00000801: ubyte labels
        for ((i = 0; i < n; i++)); do byte $(( i % 10 )); done
    } > "$dir/$prefix-labels-idx1-ubyte"
}
write_split train 32
write_split t10k 16
