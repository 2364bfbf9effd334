#!/usr/bin/env bash
# abi_growth.sh DMNIST_RUN PLUGIN_CHECK CKPT_TOOL PLUGIN_DIR
#
# The ABI grows by appending (docs/plugin-abi.md): a layer plugin built with
# ABI 1.0's struct layouts (tests/core/plugins/abi10_layer.c) still loads,
# passes dmnist-plugin-check, trains, checkpoints and resumes exactly on this
# 1.1 host, which neither reads its info past 1.0's fields nor calls the trap
# functions lying in memory where 1.1's bind_state and init_state would be.
# The same plugin claiming the 1.1 vtable size does reach the traps (so they
# are live), and a 1.1 layer asking for state without bind_state is refused.
set -u
RUN=${1:?dmnist-run} CHECK=${2:?dmnist-plugin-check} TOOL=${3:?ckpt_tool} DIR=${4:?plugin folder}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-abi.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

cfg=$TMP/abi.ini
cat >"$cfg" <<'INI'
[experiment]
name = abi-growth
seed = 3
backend = local
threads = 1

[data]
type = synthetic
train_size = 1000
test_size = 200
batch_size = 16

[train]
total_batches = 60
log_every = 20

[optimizer]
type = adam
lr = 0.003

[layer.flat]
type = flatten

[layer.hidden]
type = dense
units = 32

[layer.scale]
type = abi10_affine

[layer.act]
type = relu

[layer.out]
type = dense
units = 10

[layer.loss]
type = softmax_cross_entropy
INI
P10=(--plugin-path "$DIR/abi10")
traps='trap: the host called'

# 1. It loads and the checker, which binds layers like the trainer, passes it.
"$RUN" "${P10[@]}" --list-plugins >"$TMP/list.txt" 2>&1 || { cat "$TMP/list.txt"; fail "--list-plugins"; }
grep -q "abi10_affine" "$TMP/list.txt" || { cat "$TMP/list.txt"; fail "abi10_affine not listed"; }
"$CHECK" "$DIR/abi10/dm_abi10.so" >"$TMP/check.txt" 2>&1 || { cat "$TMP/check.txt"; fail "dmnist-plugin-check failed the 1.0 plugin"; }
grep -Eq "built for ABI 1\.0 \(host 1\.[0-9]+\)" "$TMP/check.txt" || { cat "$TMP/check.txt"; fail "the plugin does not say ABI 1.0"; }
grep -q "vtable $(( 8 * 8 )) bytes" "$TMP/check.txt" || { cat "$TMP/check.txt"; fail "not a 1.0-sized vtable (64 bytes)"; }
ok "ABI 1.0 layer plugin loads; dmnist-plugin-check: $(grep '^summary' "$TMP/check.txt")"

# 2. It trains: the loss falls, nothing past 1.0 was called, no layer state.
"$RUN" "${P10[@]}" --dry-run "$cfg" >"$TMP/dry.txt" 2>&1 || { cat "$TMP/dry.txt"; fail "--dry-run"; }
grep -q "^scale  *abi10_affine " "$TMP/dry.txt" || { cat "$TMP/dry.txt"; fail "no abi10_affine layer in the summary"; }
grep -q "^layer state:" "$TMP/dry.txt" && fail "the host gave the 1.0 layer state it never asked for"
"$RUN" "${P10[@]}" --set train.checkpoint_dir="$TMP/a" --set train.checkpoint_every=30 "$cfg" >"$TMP/a.log" 2>&1 ||
    { cat "$TMP/a.log"; fail "training with the 1.0 plugin failed"; }
grep -q "$traps" "$TMP/a.log" && { cat "$TMP/a.log"; fail "a trap was called"; }
loss() { sed -n "s/^step *$1\/60 .* loss \([0-9.]*\) .*/\1/p" "$TMP/a.log"; }
l20=$(loss 20) l60=$(loss 60)
[ -n "$l20" ] && [ -n "$l60" ] || { cat "$TMP/a.log"; fail "no loss logged at steps 20 and 60"; }
awk -v a="$l20" -v b="$l60" 'BEGIN { exit !(b < 0.8 * a) }' || { cat "$TMP/a.log"; fail "the loss did not fall ($l20 -> $l60)"; }
f=$TMP/a/ckpt-0000000060.dmck
[ "$("$TOOL" info "$f" | sed -n 's/^n_state=//p')" = 0 ] || fail "the checkpoint holds layer state for a 1.0 plugin"
ok "trains with the 1.0 plugin: loss $l20 at step 20 -> $l60 at step 60; $(grep '^test loss' "$TMP/a.log")"

# 3. And resumes exactly: 30 + resumed 30 == 60.
"$RUN" "${P10[@]}" --set train.checkpoint_dir="$TMP/b" "$cfg" 30 >"$TMP/b1.log" 2>&1 || { cat "$TMP/b1.log"; fail "30 steps"; }
"$RUN" "${P10[@]}" --resume --set train.checkpoint_dir="$TMP/b" "$cfg" 60 >"$TMP/b2.log" 2>&1 || { cat "$TMP/b2.log"; fail "resume"; }
"$TOOL" same "$f" "$TMP/b/ckpt-0000000060.dmck" || fail "30 + resumed 30 differs from 60 straight"
ok "30 steps + resumed 30 == 60 straight, bit for bit"

# 4. The traps are live: the same plugin claiming 1.1's vtable size gets its
#    state count read and bind_state called, and the run stops there.
"$RUN" --plugin-path "$DIR/abi10_claims11" --set layer.scale.type=abi10_claims11 --dry-run "$cfg" \
    >/dev/null 2>"$TMP/claim.err" && { cat "$TMP/claim.err"; fail "the plugin claiming 1.1 was not caught by its trap"; }
grep -q "layer.scale: trap: the host called bind_state past the vtable's struct_size" "$TMP/claim.err" ||
    { cat "$TMP/claim.err"; fail "claiming 1.1 did not reach the bind_state trap"; }
ok "claiming the 1.1 vtable size reaches the trap: $(cat "$TMP/claim.err")"

# 5. A 1.1 layer asking for state without bind_state is refused, in one line.
"$RUN" --plugin-path "$DIR/abi11_nobind" --set layer.scale.type=abi11_nobind --dry-run "$cfg" \
    >"$TMP/nobind.out" 2>"$TMP/nobind.err" && { cat "$TMP/nobind.out" "$TMP/nobind.err"; fail "accepted"; }
[ "$(wc -l <"$TMP/nobind.err")" = 1 ] || { cat "$TMP/nobind.err"; fail "not one line"; }
grep -q "abi.ini:[0-9]*: layer.scale: layer type 'abi11_nobind' asks for 4 state floats but has no bind_state to receive them$" \
    "$TMP/nobind.err" || { cat "$TMP/nobind.err"; fail "unclear refusal"; }
ok "refused: $(cat "$TMP/nobind.err")"
