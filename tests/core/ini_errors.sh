#!/usr/bin/env bash
# Each broken config must give exit code 2 and one line naming file:line and the problem.
set -u
run=$1
src=${DMNIST_SOURCE_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
base="$src/configs/cnn.ini"

# case NAME SED-EXPR EXPECTED-SUBSTRING [extra args]
case_() {
  local name=$1 expr=$2 want=$3; shift 3
  sed "$expr" "$base" > "$tmp/$name.ini"
  out=$("$run" --dry-run "$tmp/$name.ini" "$@" 2>&1 >/dev/null); rc=$?
  lines=$(printf '%s\n' "$out" | grep -c .)
  if [ "$rc" -ne 2 ] || [[ "$out" != *"$want"* ]] || [ "$lines" -ne 1 ]; then
    echo "FAIL $name: rc=$rc lines=$lines"; echo "  got:  $out"; echo "  want: $want"; fail=1
  else
    echo "ok   $name: $out"
  fi
}
# line numbers refer to configs/cnn.ini
ln=$(grep -n '^filters = 64' "$base" | cut -d: -f1)
case_ unknown_key "s/^filters = 64/filter = 64/" "$tmp/unknown_key.ini:$ln: layer.conv2: unknown key 'filter' (did you mean 'filters'?)"
case_ wrong_type "s/^filters = 64/filters = many/" "$tmp/wrong_type.ini:$ln: layer.conv2: 'filters' must be an integer, got 'many'"
ln=$(grep -n '^rate = 0.25' "$base" | cut -d: -f1)
case_ out_of_range "s/^rate = 0.25/rate = 1.5/" "$tmp/out_of_range.ini:$ln: layer.drop1: 'rate' = 1.5 is out of range"
ln=$(grep -n '^type = maxpool2d' "$base" | cut -d: -f1)
case_ unknown_type "s/^type = maxpool2d/type = maxpool/" "$tmp/unknown_type.ini:$ln: layer.pool: unknown layer type 'maxpool' (did you mean 'maxpool2d'?)"
ln=$(grep -n '^\[train\]' "$base" | cut -d: -f1)
case_ unknown_section "s/^\[train\]/[training]/" "$tmp/unknown_section.ini:$ln: unknown section [training] (did you mean [train]?)"
case_ syntax "s/^log_every = 10/log_every 10/" "syntax error"
case_ bad_set "" "--set optimizer.lrr: unknown key 'lrr' (did you mean 'lr'?)" --set optimizer.lrr=1
case_ bad_backend "" "unknown backend 'mpii' (did you mean 'mpi'?)" --set experiment.backend=mpii
exit $fail
