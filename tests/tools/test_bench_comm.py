#!/usr/bin/env python3
"""dmnist-bench-comm: one row per size and backend plus the model's gradient
buffer, numbers consistent with their definitions (algbw = bytes / time,
busbw = algbw * 2(n-1)/n >= algbw for n > 1), the same rows in the table
and the CSV, and one-line refusals of bad input."""

import os
import re

from toolstest import BENCH, TINY, check, fail, flat_buffer_floats, have_mpi, need_gloo, read_csv, run, tmpdir

need_gloo()
tmp = tmpdir("bench")
MAX = 4096
SIZES = []
b = 4
while b <= MAX:
    SIZES.append(b)
    b *= 2
model_floats = flat_buffer_floats(TINY)


def check_rows(rows, backend, n):
    mine = [r for r in rows if r["backend"] == backend]
    sizes = [int(r["bytes"]) for r in mine if r["op"] == "allreduce"]
    check(sizes == SIZES, "%s: sizes %s, expected each of %s once, in order" % (backend, sizes, SIZES))
    models = [r for r in mine if r["op"] == "model"]
    check(len(models) == 1, "%s: %d model rows, expected 1" % (backend, len(models)))
    check(int(models[0]["count"]) == model_floats,
          "%s: model row has %s floats, the trainer's buffer has %d" % (backend, models[0]["count"], model_floats))
    check(len(mine) == len(SIZES) + 1, "%s: %d rows, expected %d" % (backend, len(mine), len(SIZES) + 1))
    for r in mine:
        what = "%s %s B" % (backend, r["bytes"])
        nbytes, count, reps = int(r["bytes"]), int(r["count"]), int(r["reps"])
        t, lo, hi = float(r["time_us"]), float(r["time_min_us"]), float(r["time_max_us"])
        algbw, busbw = float(r["algbw_GBps"]), float(r["busbw_GBps"])
        check(int(r["world_size"]) == n, "%s: world_size %s, expected %d" % (what, r["world_size"], n))
        check(nbytes == 4 * count, "%s: bytes %d != 4 x count %d" % (what, nbytes, count))
        check(reps == 3, "%s: %d repetitions, expected --iters 3" % (what, reps))
        check(0 < lo <= t <= hi, "%s: expected 0 < min %g <= median %g <= max %g" % (what, lo, t, hi))
        # algbw in GB/s = bytes / (time_us * 1e-6) / 1e9; the CSV rounds time to 1 ns
        want = nbytes / t / 1e3
        check(abs(algbw - want) <= 1e-3 * want + 2e-6, "%s: algbw %g, bytes/time gives %g" % (what, algbw, want))
        factor = 2.0 * (n - 1) / n
        check(abs(busbw - algbw * factor) <= 1e-3 * algbw * factor + 2e-6,
              "%s: busbw %g != algbw %g x 2(n-1)/n" % (what, busbw, algbw))
        if n > 1:
            check(busbw >= algbw, "%s: busbw %g < algbw %g with %d ranks" % (what, busbw, algbw, n))
        else:
            check(busbw == 0, "%s: busbw %g with one rank (2(n-1)/n = 0)" % (what, busbw))


def check_table(out, backend, n):
    m = re.search(r"# allreduce \(sum, float32\) on %s: %d ranks?.*?\n(.*?)# average busbw" % (backend, n), out,
                  re.S)
    check(m, "no table for %s with %d ranks in the output:\n%s" % (backend, n, out))
    data = [l for l in m.group(1).splitlines() if l.strip() and not l.startswith("#")]
    check(len(data) == len(SIZES) + 1, "%s table: %d rows, expected %d" % (backend, len(data), len(SIZES) + 1))



def bench(np_, backends, env=None):
    csv_path = os.path.join(tmp, "bench-%s-np%d.csv" % ("-".join(backends), np_))
    out, _ = run([BENCH, "--np", str(np_), "--backends", ",".join(backends), "--max-bytes", str(MAX), "--iters",
                  "3", "--warmup", "1", "--csv", csv_path, TINY], timeout=180, env=env)
    rows = read_csv(csv_path)
    for be in backends:
        check_rows(rows, be, np_)
        check_table(out, be, np_)
    check([r["backend"] for r in rows] == [b for b in backends for _ in range(len(SIZES) + 1)],
          "CSV rows are not one block per backend in the order asked: %s" % [r["backend"] for r in rows])


# 3 ranks, so that busbw = 4/3 algbw differs from algbw.
bench(3, ["gloo"])
# Two backends in one call; Open MPI keeps start-up allocations until exit,
# so leak checks (in a sanitizer build) are off for this one.
backends = ["gloo"]
if have_mpi():
    backends = ["mpi", "gloo"]
    bench(2, backends, env={"ASAN_OPTIONS": "detect_leaks=0"})

# One process, backend local: no launcher, the process is rank 0 of 1.
csv1 = os.path.join(tmp, "local.csv")
out, _ = run([BENCH, "--backends", "local", "--max-bytes", str(MAX), "--iters", "3", "--warmup", "1",
              "--csv", csv1, TINY])
check_rows(read_csv(csv1), "local", 1)
check_table(out, "local", 1)

# Bad input: one line naming the problem, exit 2.
for args, words in [(["--backends", "nope"], "unknown backend 'nope'"),
                    (["--max-bytes", "6"], "--max-bytes 6"),
                    (["--np", "2", "--backends", "local"], "backend 'local' has one rank only"),
                    (["--iters", "0"], "--iters 0")]:
    _, err = run([BENCH] + args + [TINY], expect=2)
    lines = [l for l in err.splitlines() if l.strip()]
    check(len(lines) == 1 and words in lines[0], "%s: expected one line with %r, got:\n%s" % (args, words, err))
print("ok: %s x %d sizes + model, 3 ranks; local 1 rank; 4 refusals" % (",".join(backends), len(SIZES)))
