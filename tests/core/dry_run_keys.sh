#!/usr/bin/env bash
# --dry-run prints every core key, in its table's order, with its resolved
# value: for each core section, the keys printed under [SECTION] begin with
# exactly the keys --help-plugin SECTION lists (both read the same table),
# and a few resolved values are checked.
set -u
run=$1
src=${DMNIST_SOURCE_DIR:?}
fail=0
cd "$src" || exit 1 # data.path is relative to the working directory
out=$("$run" --dry-run --set data.batch_size=32 configs/cnn.ini) || { echo "FAIL: --dry-run"; exit 1; }
for sec in experiment data optimizer train; do
  want=$("$run" --help-plugin "$sec" | awk 'NR > 2 { print $1 }')
  got=$(printf '%s\n' "$out" | awk -v s="[$sec]" '$0 == s { on = 1; next } /^\[/ || /^$/ { on = 0 } on { print $1 }' |
        head -n "$(printf '%s\n' "$want" | grep -c .)")
  if [ "$got" != "$want" ]; then
    echo "FAIL [$sec]: printed keys differ from the table"; diff <(echo "$want") <(echo "$got"); fail=1
  else
    echo "ok   [$sec]: $(echo $want)"
  fi
done
# resolved, not as written: the default backend and eval_batch_size = 0 (batch_size)
for kv in "backend = local" "eval_batch_size = 32" "sync_check_every = 0" "plugin_path = "; do
  if printf '%s\n' "$out" | grep -qxF "$kv"; then echo "ok   $kv"; else echo "FAIL: no line '$kv'"; fail=1; fi
done
exit $fail
