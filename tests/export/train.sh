#!/usr/bin/env bash
# Fixture of tests/export: 20 steps of configs/cnn.ini (the seed CNN) on real
# MNIST, checkpointed into $DMNIST_EXPORT_WORK/ckpt.
set -euo pipefail
: "${DMNIST_RUN:?}" "${DMNIST_SOURCE_DIR:?}" "${DMNIST_EXPORT_WORK:?}"
cd "$DMNIST_SOURCE_DIR"
[ -f data/mnist/t10k-images-idx3-ubyte.gz ] || { echo "FAIL: MNIST missing: scripts/get-mnist.sh first"; exit 1; }
rm -rf "$DMNIST_EXPORT_WORK"
mkdir -p "$DMNIST_EXPORT_WORK"
"$DMNIST_RUN" configs/cnn.ini 20 --no-progress --set "train.checkpoint_dir=$DMNIST_EXPORT_WORK/ckpt" \
    > "$DMNIST_EXPORT_WORK/train.log" 2>&1 || { cat "$DMNIST_EXPORT_WORK/train.log"; exit 1; }
tail -1 "$DMNIST_EXPORT_WORK/train.log"
ls "$DMNIST_EXPORT_WORK/ckpt/ckpt-0000000020.dmck"
