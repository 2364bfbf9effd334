#!/usr/bin/env bash
# export.refusals: what dmnist-export refuses, each with one line on stderr
# naming the file and the reason, and dmnist-run's exit codes (2: command
# line, config or plugin; 1: while running), leaving no file behind.
set -u
EXPORT=${DMNIST_EXPORT:?}
SRC=${DMNIST_SOURCE_DIR:?}
CKPT=${DMNIST_EXPORT_WORK:?}/ckpt
TMP=$(mktemp -d "${TMPDIR:-/tmp}/export-refusals.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
cd "$SRC"
bad=0

# expect NAME CODE REGEX CMD...: CMD exits CODE with exactly one line on stderr matching REGEX.
expect() {
    local name=$1 code=$2 re=$3
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$? lines
    lines=$(wc -l <"$TMP/err")
    if [ "$rc" = "$code" ] && [ "$lines" = 1 ] && grep -Eq -- "$re" "$TMP/err"; then
        echo "ok: $name: exit $rc: $(cat "$TMP/err")"
    else
        echo "FAIL: $name: exit $rc (want $code), $lines stderr lines (want 1 matching /$re/):"
        sed 's/^/    | /' "$TMP/err" "$TMP/out"
        bad=1
    fi
}

# 1. A layer whose plugin has no onnx method (tests/export/plugins/noonnx.c).
cat >"$TMP/noonnx.ini" <<INI
[experiment]
name = noonnx
seed = 7
device = cpu
backend = local

[data]
type = synthetic
train_size = 256
test_size = 64
batch_size = 32

[optimizer]
type = sgd
lr = 0.05

[layer.flatten]
type = flatten

[layer.act]
type = noonnx

[layer.logits]
type = dense
units = 10

[layer.loss]
type = softmax_cross_entropy
INI
expect "layer without an ONNX description" 2 "layer\.act: layer type 'noonnx' .*has no ONNX description" \
    "$EXPORT" "$CKPT" "$TMP/noonnx.ini" --plugin-path "${DMNIST_TEST_NOONNX_DIR:?}" -o "$TMP/a.onnx"
expect "... nor to safetensors" 2 "layer\.act: layer type 'noonnx' .*has no ONNX description" \
    "$EXPORT" "$CKPT" "$TMP/noonnx.ini" --plugin-path "$DMNIST_TEST_NOONNX_DIR" --format safetensors -o "$TMP/a.st"

# 2. A checkpoint of another model: the seed CNN with 16 first filters.
expect "checkpoint of another model" 1 "ckpt-0000000020\.dmck: checkpoint was written for a different model" \
    "$EXPORT" "$CKPT" configs/cnn.ini --set layer.conv1.filters=16 -o "$TMP/b.onnx"
# ... and a file that is no checkpoint.
echo "not a checkpoint" >"$TMP/junk.dmck"
expect "not a checkpoint" 1 "junk\.dmck: .*(truncated|not a dmnist checkpoint)" \
    "$EXPORT" "$TMP/junk.dmck" configs/cnn.ini -o "$TMP/c.onnx"

# 3. An output that cannot be written (a folder that does not exist: root
# writes anywhere else).
for fmt in onnx safetensors; do
    expect "unwritable output ($fmt)" 1 "$TMP/missing/m\.$fmt: cannot write: No such file or directory" \
        "$EXPORT" "$CKPT" configs/cnn.ini --format $fmt -o "$TMP/missing/m.$fmt"
done
expect "--dump-logits unwritable" 1 "$TMP/missing/l\.npy: cannot write" \
    "$EXPORT" "$CKPT" configs/cnn.ini --dump-logits "$TMP/missing/l.npy"

# 4. The command line.
expect "unknown format" 2 "--format pt: expected onnx or safetensors" \
    "$EXPORT" "$CKPT" configs/cnn.ini --format pt -o "$TMP/d"
expect "nothing to write" 2 "nothing to write" "$EXPORT" "$CKPT" configs/cnn.ini
expect "missing config" 2 "expected CHECKPOINT CONFIG\.ini" "$EXPORT" "$CKPT"
expect "bad config key" 2 "layer\.conv1\.filter: unknown key 'filter'" \
    "$EXPORT" "$CKPT" configs/cnn.ini --set layer.conv1.filter=3 -o "$TMP/e.onnx"

left=$(find "$TMP" -name '*.onnx*' -o -name '*.st*' -o -name '*.tmp.*' | head -3)
if [ -n "$left" ]; then
    echo "FAIL: a refused export left files: $left"
    bad=1
fi
[ $bad = 0 ] && echo "ok: every refusal"
exit $bad
