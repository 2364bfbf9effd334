#!/usr/bin/env bash
# run_job.sh (installed as dmnist-comm-job): start a multi-process
# dmnist-comm-check job, wait for it within a time limit, and judge it.
#
#   dmnist-comm-job local NP [options] -- PROGRAM ARGS...
#   dmnist-comm-job mpi NP [options] -- PROGRAM ARGS...
#
# local: starts NP processes here with DMNIST_RANK, DMNIST_WORLD_SIZE and
#        DMNIST_RENDEZVOUS (a fresh file:// directory from mktemp -d, or a
#        redis-server started here with --redis).
# mpi:   runs mpirun -np NP (as root too, oversubscribed).
#
# Options:
#   --start K         local: start only ranks 0..K-1; the others never arrive
#   --redis           local: rendezvous via a redis-server on a free port
#                     (exit 77, "skipped", when redis-server is not installed)
#   --expect-done M   M ranks must reach the end with no failed check
#                     (default NP; fewer when a rank is meant to leave)
#   --limit S         kill the job after S seconds (default 120)
#   --mpirun PATH     mpi: the mpirun to use (default: mpirun on PATH)
#   --mpi-recovery    mpi: keep the job running when a rank exits
#                     (mpirun --enable-recovery); mpirun's exit status is then
#                     not meaningful and only the ranks' output is judged
#
# The job passes when no line says FAIL, exactly M lines say
# "DONE ... 0 failed", nothing had to be killed, and every process (local)
# or mpirun (mpi, unless --mpi-recovery) exited with status 0.
set -u

usage() { echo "usage: run_job.sh local|mpi NP [options] -- PROGRAM ARGS..." >&2; exit 2; }

[ $# -ge 2 ] || usage
launcher=$1 np=$2
shift 2
start=$np expect_done=$np limit=120 use_redis=0 mpirun=mpirun recovery=0
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case $1 in
    --start) start=$2; shift 2 ;;
    --redis) use_redis=1; shift ;;
    --expect-done) expect_done=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --mpirun) mpirun=$2; shift 2 ;;
    --mpi-recovery) recovery=1; shift ;;
    *) usage ;;
    esac
done
[ "${1:-}" = "--" ] || usage
shift
[ $# -ge 1 ] || usage
case $launcher in local | mpi) ;; *) usage ;; esac

workdir=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-comm.XXXXXX") || exit 1
pids=()
redis_pid=
cleanup() {
    for pid in "${pids[@]}" $redis_pid; do
        kill -KILL "$pid" 2>/dev/null
    done
    rm -rf "$workdir"
}
trap cleanup EXIT

# Kill what is still running at the limit: TERM first, then KILL.
killed=0
wait_all() {
    local t0=$SECONDS alive pid
    while :; do
        alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && return
        if [ $((SECONDS - t0)) -ge "$limit" ]; then
            echo "run_job: still running after ${limit} s: killing the job"
            killed=1
            for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
            sleep 2
            for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
            return
        fi
        sleep 0.1
    done
}

# Answer PING with PONG on 127.0.0.1:$1 (bash's /dev/tcp, no redis-cli needed).
redis_ping() {
    local reply=
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 1 reply <&3
    exec 3<&- 3>&-
    [ "${reply%$'\r'}" = "+PONG" ]
}

start_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "run_job: redis-server not installed: skipping"
        exit 77
    fi
    local attempt port k
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 40000))
        redis_ping "$port" && continue # taken
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --dir "$workdir" >"$workdir/redis.log" 2>&1 &
        redis_pid=$!
        disown "$redis_pid" # no "Killed" notice when cleanup stops it
        for k in $(seq 50); do
            if redis_ping "$port"; then
                rendezvous="redis://127.0.0.1:$port"
                echo "run_job: redis-server on port $port"
                return
            fi
            kill -0 "$redis_pid" 2>/dev/null || break # port was taken: try another
            sleep 0.1
        done
        kill -KILL "$redis_pid" 2>/dev/null
        redis_pid=
    done
    echo "run_job: FAIL could not start redis-server:"
    cat "$workdir/redis.log"
    exit 1
}

status_bad=0
if [ "$launcher" = local ]; then
    rendezvous="file://$workdir/rendezvous"
    mkdir "$workdir/rendezvous"
    [ $use_redis = 1 ] && start_redis
    for ((r = 0; r < start; r++)); do
        DMNIST_RANK=$r DMNIST_WORLD_SIZE=$np DMNIST_RENDEZVOUS=$rendezvous \
            "$@" >"$workdir/rank$r.log" 2>&1 &
        pids+=($!)
    done
    wait_all
    for ((r = 0; r < start; r++)); do
        wait "${pids[$r]}"
        rc=$?
        cat "$workdir/rank$r.log"
        if [ $rc != 0 ]; then
            echo "run_job: rank $r exited with status $rc"
            status_bad=1
        fi
    done
else
    # Shared-memory transfers without ptrace-based single copy (blocked in
    # most containers).
    export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
    extra=()
    [ $recovery = 1 ] && extra+=(--enable-recovery)
    "$mpirun" --allow-run-as-root --oversubscribe "${extra[@]}" -np "$np" "$@" \
        >"$workdir/mpirun.log" 2>&1 &
    pids+=($!)
    wait_all
    wait "${pids[0]}"
    rc=$?
    cat "$workdir/mpirun.log"
    if [ $recovery = 0 ] && [ $rc != 0 ]; then
        echo "run_job: mpirun exited with status $rc"
        status_bad=1
    fi
fi

pids=() # all reaped: nothing left for cleanup to kill
cat "$workdir"/*.log >"$workdir/all.out"
n_fail=$(grep -c ': FAIL ' "$workdir/all.out")
n_done=$(grep -c ': DONE [0-9]* passed, 0 failed' "$workdir/all.out")
if [ $killed = 1 ] || [ $status_bad = 1 ] || [ "$n_fail" != 0 ] || [ "$n_done" != "$expect_done" ]; then
    echo "run_job: FAILED ($n_fail failed checks, $n_done of $expect_done ranks done, killed=$killed)"
    exit 1
fi
echo "run_job: passed ($n_done of $np ranks done)"
exit 0
