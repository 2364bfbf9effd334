#!/usr/bin/env bash
# scaling_bench.sh [STEPS [REPEATS]]: the measurements behind the tables in
# docs/distributed.md and docs/benchmarks.md (not a ctest case: minutes
# long, and only meaningful on an otherwise idle machine).
#
# The seed CNN (configs/cnn-synthetic.ini: 2,380,944 parameters, 9.5 MB of
# gradients), batch 64 per rank, one thread per rank (experiment.threads=1):
#   - 1 rank (backend local) against 2 ranks (dmnist-run --np 2) with mpi
#     and gloo: images/s and scaling efficiency = ips(2) / (2 x ips(1));
#   - for each backend, train.fusion_mb = 0 (one allreduce per layer), 4
#     (the default) and 1000 (one bucket for the model): the share of the
#     training time that rank waits for its gradient buckets (comm-wait),
#     averaged over ranks.
# Each configuration runs STEPS steps per rank (default 60) REPEATS times
# (default 3), interleaved so that a burst of load elsewhere hits all of
# them alike; the median is reported. The first logged interval (10 steps:
# page faults, thread start-up) is left out of every number.
#
# Environment: DMNIST_RUN (default build/dmnist-run), DMNIST_SOURCE_DIR
# (default: this checkout). Prints one line per run, then a table.
set -u
here=$(cd "$(dirname "$0")" && pwd)
SRC=${DMNIST_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
RUN=${DMNIST_RUN:-$SRC/build/dmnist-run}
STEPS=${1:-60} REPEATS=${2:-3}
CFG=$SRC/configs/cnn-synthetic.ini
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-bench.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
common=(--set experiment.threads=1 --set train.log_every=10 --set data.test_size=64 --no-progress)

# measure NAME ARGS...: run once; print "ips wait_share" over the logged
# intervals after the first (from the --metrics JSON lines).
measure() {
    local name=$1
    shift
    "$RUN" "$@" "${common[@]}" --metrics "$TMP/$name.jsonl" >"$TMP/$name.log" 2>&1 ||
        { cat "$TMP/$name.log" >&2; echo "run $name failed" >&2; exit 1; }
    # time_s is since the start: interval = difference of consecutive lines;
    # images = ips x interval; wait share = comm_wait_s / interval.
    grep '"event":"step"' "$TMP/$name.jsonl" | sed 's/.*"images_per_s":\([^,]*\),.*"time_s":\([^,]*\),"comm_wait_s":\([^,]*\),.*/\1 \2 \3/' |
        awk 'NR == 1 { prev = $2; next }
             { dt = $2 - prev; prev = $2; img += $1 * dt; t += dt; w += $3 }
             END { if (t > 0) printf "%.1f %.1f\n", img / t, 100 * w / t; else print "nan nan" }'
}

names=(one)
args_one=("$CFG" --set experiment.backend=local --set train.total_batches="$STEPS")
for be in mpi gloo; do
    for f in 0 4 1000; do
        names+=("${be}_f$f")
    done
done
declare -A ips wait
for ((rep = 1; rep <= REPEATS; rep++)); do
    for n in "${names[@]}"; do
        if [ "$n" = one ]; then
            r=$(measure "$n.$rep" "${args_one[@]}")
        else
            be=${n%_f*} f=${n#*_f}
            r=$(measure "$n.$rep" --np 2 "$CFG" --set experiment.backend="$be" \
                --set train.total_batches=$((2 * STEPS)) --set train.fusion_mb="$f")
        fi
        echo "run $rep $n: images/s ${r% *}  comm-wait ${r#* }% (load $(cut -d' ' -f1 /proc/loadavg))"
        ips[$n]+="${r% *} "
        wait[$n]+="${r#* } "
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
one=$(median <<<"${ips[one]}")
echo
echo "| ranks x threads | backend | fusion_mb | images/s | scaling efficiency | comm-wait share |"
echo "|---|---|---|---|---|---|"
echo "| 1 x 1 | local | - | $one | 100% | - |"
for n in "${names[@]:1}"; do
    be=${n%_f*} f=${n#*_f}
    i=$(median <<<"${ips[$n]}") w=$(median <<<"${wait[$n]}")
    eff=$(awk -v a="$i" -v b="$one" 'BEGIN { printf "%.0f%%", 100 * a / (2 * b) }')
    echo "| 2 x 1 | $be | $f | $i | $eff | $w% |"
done
