#!/usr/bin/env bash
# clang_format.sh: every C, C++ and CUDA source of the project is formatted
# as .clang-format says (scripts/format.sh rewrites them). One line per file
# that is not, with the first place clang-format would change; skipped (77)
# without clang-format (Debian package clang-format).
# Standalone (no dmnist-run needed): the few helpers tests/common/lib.sh has.
SRC=${DMNIST_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
skip() { echo "skipped: $*"; exit 77; }
command -v clang-format >/dev/null || skip "no clang-format (Debian package clang-format)"
cd "$SRC" || fail "no source folder $SRC"
mapfile -t files < <("$SRC/scripts/format.sh" --list)
[ ${#files[@]} -gt 50 ] || fail "only ${#files[@]} sources found to check"
bad=0
for f in "${files[@]}"; do
    if ! out=$(clang-format --dry-run --Werror "$f" 2>&1); then
        echo "not formatted: $f: $(echo "$out" | grep -m1 'error:' | sed 's/^[^:]*://')"
        bad=$((bad + 1))
    fi
done
[ $bad = 0 ] || fail "$bad of ${#files[@]} sources differ from .clang-format: run scripts/format.sh"
ok "${#files[@]} sources formatted as .clang-format says ($(clang-format --version | head -1))"
