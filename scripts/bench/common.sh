# Sourced by the bench scripts (cpu.sh, tta.sh) after `set -euo pipefail`:
# their names and folders, die, --help from the header comment, the
# dmnist-run of a build folder and the Python that has torch.
#   . "$(dirname "$0")/common.sh"

prog=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "$prog: $*" >&2; exit 1; }

# The calling script's header comment (line 2 up to `set -euo`), unindented.
bench_help() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# Sets build (made absolute against the repository root) and run, its
# dmnist-run; dies with "$run not found: build dmnist first<HINT>, or pass
# --build DIR" when there is none.
bench_find_run() {
    case "$build" in /*) ;; *) build="$root/$build" ;; esac
    run="$build/dmnist-run"
    [ -x "$run" ] || die "$run not found: build dmnist first$1, or pass --build DIR"
}

# Sets python, unless the caller chose one, to the first of Debian's
# python3 and PATH's that imports torch; dies with "no Python with torch
# found (<HINT>)" when neither does.
bench_find_python() {
    [ -z "$python" ] || return 0
    local p
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import torch' 2>/dev/null; then python=$p; break; fi
    done
    [ -n "$python" ] || die "no Python with torch found ($1)"
}
