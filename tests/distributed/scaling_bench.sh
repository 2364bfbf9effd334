#!/usr/bin/env bash
# scaling_bench.sh [STEPS [REPEATS]]: the measurements behind the tables in
# docs/distributed.md and docs/reports/benchmarks.md (not a ctest case: minutes
# long, and only meaningful on an otherwise idle machine).
#
# The seed CNN (configs/cnn-synthetic.ini: 2,380,944 parameters, 9.5 MB of
# gradients), batch 64 per rank, one thread per rank (experiment.threads=1):
#   - 1 rank (backend local) against 2 ranks (dmnist-run --np 2) with mpi
#     and gloo: images/s and scaling efficiency = ips(2) / (2 x ips(1));
#   - for each backend, train.fusion_mb = 0 (one allreduce per layer), 4
#     (the default) and 1000 (one bucket for the model): the share of the
#     training time that rank waits for its gradient buckets (comm-wait),
#     averaged over ranks; "mpi0" is mpi without its progress thread
#     (comm.progress_us = 0), for fusion_mb 0 and 4.
# Each configuration runs STEPS steps per rank (default 60) REPEATS times
# (default 3), interleaved so that a burst of load elsewhere hits all of
# them alike; the median is reported. The first logged interval (10 steps:
# page faults, thread start-up) is left out of the wall-clock numbers.
#
# On a machine that other work keeps busy, wall-clock scaling measures the
# share of the cores each run got more than the code. So every
# configuration also runs STEPS/3 steps, and the CPU time (user + system,
# all ranks, /usr/bin/time) of the short run is subtracted from the long
# one's: "CPU ms/image" is what one more training image costs in CPU, start-
# up and evaluation cancelled out, and CPU efficiency = CPU ms/image of one
# rank over that of two (a rank spinning in MPI while it waits counts as
# CPU; one sleeping in Gloo does not). Without other load the two
# efficiencies agree.
#
# Environment: DMNIST_RUN (default build/dmnist-run), DMNIST_SOURCE_DIR
# (default: this checkout), DMNIST_BENCH_CPUS (e.g. 0,1: run every job under
# taskset on those cores, to emulate a 2-core machine on a bigger one).
# Backends whose plugin is not found are left out. Prints one line per
# run, then a table.
set -u
here=$(cd "$(dirname "$0")" && pwd)
SRC=${DMNIST_SOURCE_DIR:-$(cd "$here/../.." && pwd)}
RUN=${DMNIST_RUN:-$SRC/build/dmnist-run}
STEPS=${1:-60} REPEATS=${2:-3}
CFG=$SRC/configs/cnn-synthetic.ini
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-bench.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
common=(--set experiment.threads=1 --set train.log_every=10 --set data.test_size=64 --no-progress)
pin=()
[ -n "${DMNIST_BENCH_CPUS:-}" ] && pin=(taskset -c "$DMNIST_BENCH_CPUS")

# measure NAME ARGS...: run once; print "ips wait_share cpu_s": images/s
# and wait share over the logged intervals after the first (from the
# --metrics JSON lines), and the CPU seconds of the whole run.
measure() {
    local name=$1
    shift
    /usr/bin/time -f "%U %S" -o "$TMP/$name.time" "${pin[@]}" "$RUN" "$@" "${common[@]}" --metrics "$TMP/$name.jsonl" \
        >"$TMP/$name.log" 2>&1 || { cat "$TMP/$name.log" >&2; echo "run $name failed" >&2; exit 1; }
    # time_s is since the start: interval = difference of consecutive lines;
    # images = ips x interval; wait share = comm_wait_s / interval.
    local r
    r=$(grep '"event":"step"' "$TMP/$name.jsonl" | sed 's/.*"images_per_s":\([^,]*\),.*"time_s":\([^,]*\),"comm_wait_s":\([^,]*\),.*/\1 \2 \3/' |
        awk 'NR == 1 { prev = $2; next }
             { dt = $2 - prev; prev = $2; img += $1 * dt; t += dt; w += $3 }
             END { if (t > 0) printf "%.1f %.1f\n", img / t, 100 * w / t; else print "nan nan" }')
    echo "$r $(awk '{ print $1 + $2 }' "$TMP/$name.time")"
}

names=(one)
have() { "$RUN" --list-plugins 2>/dev/null | grep -qw "$1"; }
for be in mpi gloo; do
    have "$be" || { echo "no $be plugin: left out"; continue; }
    for f in 0 4 1000; do
        names+=("${be}_f$f")
    done
done
have mpi && names+=(mpi0_f0 mpi0_f4)
SHORT=$((STEPS / 3))
declare -A ips wait cpu
for ((rep = 1; rep <= REPEATS; rep++)); do
    for n in "${names[@]}"; do
        for len in "$SHORT" "$STEPS"; do
            if [ "$n" = one ]; then
                r=$(measure "$n.$rep.$len" "$CFG" --set experiment.backend=local --set train.total_batches="$len")
            else
                be=${n%_f*} f=${n#*_f} extra=()
                [ "$be" = mpi0 ] && be=mpi extra=(--set comm.progress_us=0)
                r=$(measure "$n.$rep.$len" --np 2 "$CFG" --set experiment.backend="$be" \
                    --set train.total_batches=$((2 * len)) --set train.fusion_mb="$f" "${extra[@]}")
            fi
            read -r i w c <<<"$r"
            [ "$len" = "$SHORT" ] && { c_short=$c; continue; }
        done
        ranks=1
        [ "$n" = one ] || ranks=2
        # CPU ms per image: the long run's extra CPU over its extra images
        ms=$(awk -v a="$c" -v b="$c_short" -v d=$(((STEPS - SHORT) * 64 * ranks)) 'BEGIN { printf "%.2f", 1000 * (a - b) / d }')
        echo "run $rep $n: images/s $i  comm-wait $w%  CPU ms/image $ms (load $(cut -d' ' -f1 /proc/loadavg))"
        ips[$n]+="$i "
        wait[$n]+="$w "
        cpu[$n]+="$ms "
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
one=$(median <<<"${ips[one]}") one_cpu=$(median <<<"${cpu[one]}")
echo
echo "| ranks x threads | backend | fusion_mb | images/s | scaling efficiency | comm-wait share | CPU ms/image | CPU efficiency |"
echo "|---|---|---|---|---|---|---|---|"
echo "| 1 x 1 | local | - | $one | 100% | - | $one_cpu | 100% |"
for n in "${names[@]:1}"; do
    be=${n%_f*} f=${n#*_f}
    i=$(median <<<"${ips[$n]}") w=$(median <<<"${wait[$n]}") c=$(median <<<"${cpu[$n]}")
    eff=$(awk -v a="$i" -v b="$one" 'BEGIN { printf "%.0f%%", 100 * a / (2 * b) }')
    ceff=$(awk -v a="$one_cpu" -v b="$c" 'BEGIN { printf "%.0f%%", 100 * a / b }')
    echo "| 2 x 1 | $be | $f | $i | $eff | $w% | $c | $ceff |"
done
