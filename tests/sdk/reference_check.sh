#!/bin/sh
# reference_check.sh PYTHON CHECKER PLUGIN.so TYPE RULE pass|fail
# Writes --reference files for RULE with optimizer_reference.py (three seeds,
# eight cases each: the defaults, then random valid settings, start
# parameters, gradients, lr and step counts), then runs CHECKER on
# PLUGIN.so's TYPE with each. pass: every run passes and its reference row
# is ok. fail: the quadratic row is still ok (the rule does decrease it) but
# the reference row FAILs and the checker exits 1.
set -u
py=$1 check=$2 so=$3 type=$4 rule=$5 want=$6
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-ref.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
for seed in 1 2 3; do
    ref=$tmp/$rule-$seed.ref
    "$py" "$here/optimizer_reference.py" "$rule" "$ref" --seed "$seed" || { echo "FAIL: optimizer_reference.py"; exit 1; }
    out=$("$check" --seed "$seed" --reference "$ref" "$so" "$type" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    row=$(printf '%s\n' "$out" | grep -E "^$type .* reference \(cpu\) ")
    case $want in
    pass)
        [ "$rc" = 0 ] && printf '%s' "$row" | grep -Eq "reference \(cpu\) +ok " ||
            { echo "FAIL: seed $seed: exit $rc, expected 0 and an ok reference row"; exit 1; } ;;
    fail)
        printf '%s\n' "$out" | grep -Eq "^$type .* quadratic \(cpu\) +ok " ||
            { echo "FAIL: seed $seed: the quadratic check did not pass (this test wants a rule that only the reference catches)"; exit 1; }
        [ "$rc" = 1 ] && printf '%s' "$row" | grep -Eq "reference \(cpu\) +FAIL .*params\[[0-9]+\] after" ||
            { echo "FAIL: seed $seed: exit $rc, expected 1 and a failed reference row"; exit 1; } ;;
    esac
done
echo "reference_check: $rule against $so ($type): $want as expected, seeds 1-3"
