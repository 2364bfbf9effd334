#!/usr/bin/env bash
# The communication term of the scaling model, measured: an allreduce of the
# seed CNN's gradients (2,380,944 floats, 9.5 MB) over shaped links in the
# fault lab (scripts/lab, docs/fault-lab.md), one rank per host, against
# scripts/bench/scaling_model.py --comm-only.
#
#   scripts/bench/lab-allreduce.sh [--shapes 1gbit:5ms,10gbit:1ms] [--ranks 2,4,8]
#       [--variants gloo,mpi,mpi-ring] [--iters 10] [--warmup 3] [--build DIR]
#
# For each shape RATE:DELAY and each N: a lab of N hosts (each link RATE
# both ways, DELAY on what each host receives, so one message waits DELAY),
# then for each variant dmnist-bench-comm --min-bytes 4 --max-bytes 4 on
# configs/cnn-synthetic.ini (the seed CNN) as a lab job: the median of
# --iters timed repetitions of the 4-byte allreduce (latency) and of the
# gradient buffer. Variants and the model each is compared with:
#   gloo      gloo::allreduce                          gloo (its ring, 2 segments in flight)
#   mpi       MPI_Iallreduce in place (dmnist's mpi)    binomial, 3 (TCP rendezvous)
#   mpi-ring  the same with OMPI_MCA_coll_libnbc_iallreduce_algorithm=1
#                                                       ring,     3
#   mpi-blocking  MPI_Allreduce (--set comm.timeouts=false: coll/tuned's
#             choice, by bytes sent Rabenseifner or a ring)  no model
# (--variants also takes mpi-blocking, which the default leaves out).
# Prints a Markdown table: N, variant, 4-byte median, measured median,
# model, measured / model. Needs root (network namespaces) and a build.
set -euo pipefail
. "$(dirname "$0")/common.sh"
shapes=1gbit:5ms,10gbit:1ms ranks=2,4,8 variants=gloo,mpi,mpi-ring iters=10 warmup=3 build=build
while [ $# -gt 0 ]; do
    case $1 in
    --shapes) shapes=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --variants) variants=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h | --help) bench_help; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
    esac
done
bench_find_run
bench=$build/dmnist-bench-comm
[ -x "$bench" ] || die "$bench not found: build dmnist first"
[ "$(id -u)" = 0 ] || die "not root: the lab needs network namespaces"
lab=$root/scripts/lab
name=allred$$
tmp=$(mktemp -d /tmp/lab-allreduce.XXXXXX)
trap '"$lab" down $name >/dev/null 2>&1; rm -rf "$tmp"' EXIT

# us_of LOG: "4-byte-us gradient-us" from rank 0's table.
us_of() {
    awk '/size\(B\)/ { getline; small = $3 } /gradient buffer/ { getline; big = $3 } END { print small, big }' "$1"
}

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r); commit $(git -C "$root" rev-parse --short HEAD)"
echo "median of $iters after $warmup warm-up; model: scripts/bench/scaling_model.py --comm-only (alpha = the delay)"
echo
echo "| link | N | variant | 4 B median ms | 9.5 MB median ms | model ms | measured / model |"
echo "|---|---:|---|---:|---:|---:|---:|"
IFS=, read -ra shape_list <<<"$shapes"
IFS=, read -ra rank_list <<<"$ranks"
IFS=, read -ra variant_list <<<"$variants"
for shape in "${shape_list[@]}"; do
    rate=${shape%%:*} delay=${shape#*:}
    gbits=$(python3 -c "import re,sys; m=re.fullmatch(r'([0-9.]+)(k|m|g)bit','$rate'); print(float(m[1])*{'k':1e-6,'m':1e-3,'g':1}[m[2]])")
    alpha_us=$(python3 -c "import re; m=re.fullmatch(r'([0-9.]+)(us|ms)','$delay'); print(float(m[1])*(1000 if m[2]=='ms' else 1))")
    for n in "${rank_list[@]}"; do
        "$lab" up $name --hosts "$n" --rate "$rate" --delay "$delay" >"$tmp/up.log" || { cat "$tmp/up.log"; die "lab up failed"; }
        for v in "${variant_list[@]}"; do
            env=() backend=$v algo=ring hops=1
            case $v in
            gloo) algo=gloo ;;
            mpi) algo=binomial hops=3 ;;
            mpi-ring) backend=mpi hops=3 env=(--env OMPI_MCA_coll_libnbc_iallreduce_algorithm=1) ;;
            mpi-blocking) backend=mpi algo=none ;;
            *) die "unknown variant $v (gloo, mpi, mpi-ring, mpi-blocking)" ;;
            esac
            logdir=$tmp/$rate-$delay-$n-$v
            if ! "$lab" job $name --np "$n" --backend "$backend" "${env[@]}" --run "$bench" --timeout 300 \
                --logdir "$logdir" -- --min-bytes 4 --max-bytes 4 --iters "$iters" --warmup "$warmup" \
                $([ $v = mpi-blocking ] && echo --set comm.timeouts=false) \
                "$root/configs/cnn-synthetic.ini" >"$tmp/job.log" 2>&1; then
                cat "$tmp/job.log" >&2
                echo "| $rate $delay | $n | $v | failed | | | |"
                continue
            fi
            read -r small big < <(us_of "$logdir/rank0.log")
            model=0
            [ $algo = none ] || model=$(python3 "$here/scaling_model.py" --comm-only --ranks "$n" --gbits "$gbits" \
                --alpha-us "$alpha_us" --algo $algo --hops $hops | awk '{ print $3 }')
            awk -v l="$rate $delay" -v n="$n" -v v="$v ($algo)" -v s="$small" -v b="$big" -v m="$model" \
                'BEGIN { printf "| %s | %d | %s | %.1f | %.1f | ", l, n, v, s / 1e3, b / 1e3
                         if (m > 0) printf "%.1f | %.2f |\n", m, b / 1e3 / m; else print "- | - |" }'
        done
        "$lab" down $name >/dev/null
    done
done
