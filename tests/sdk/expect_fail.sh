#!/bin/sh
# expect_fail.sh REGEX COMMAND...
# Passes when COMMAND exits with status 1 and prints a line matching REGEX
# (grep -E): dmnist-plugin-check noticed the defect and named it.
regex=$1
shift
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne 1 ]; then
    echo "expect_fail: exit status $rc, want 1"
    exit 1
fi
if ! printf '%s\n' "$out" | grep -Eq -- "$regex"; then
    echo "expect_fail: no line matches: $regex"
    exit 1
fi
echo "expect_fail: ok"
