#!/usr/bin/env bash
# scripts/format.sh [--list]: format every C, C++ and CUDA source of the
# project in place with clang-format and .clang-format (tests/style checks
# that nothing is left to do). --list only prints the files.
set -euo pipefail
cd "$(dirname "$0")/.."
list() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files --cached --others --exclude-standard -- '*.c' '*.h' '*.cc' '*.cu' '*.cuh'
    else
        find core include plugins tools tests docs/examples \( -name '*.c' -o -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' \) | sort
    fi | grep -v '^build' | while read -r f; do [ -f "$f" ] && echo "$f"; done
}
if [ "${1:-}" = --list ]; then list; exit 0; fi
command -v clang-format >/dev/null || { echo "format.sh: needs clang-format (apt install clang-format)" >&2; exit 2; }
list | xargs clang-format -i
