#!/usr/bin/env python3
"""scripts/compare-backends: one run per backend (gloo, mpi when built, and
an unknown one that must be reported as failed), a table, a CSV whose step
time splits into compute + communication wait + the rest, and a PNG."""

import os

from toolstest import COMPARE, TINY, check, check_png, have_mpi, need_gloo, need_gnuplot, read_csv, run, tmpdir

need_gloo()
need_gnuplot()
out_dir = os.path.join(tmpdir("compare"), "cmp")
backends = ["gloo"] + (["mpi"] if have_mpi() else [])
# Open MPI keeps start-up allocations until exit: no leak checks (sanitizer builds).
out, _ = run([COMPARE, "--np", "2", "--backends", ",".join(backends + ["nope"]), "--out", out_dir, TINY],
             expect=1, timeout=240, env={"ASAN_OPTIONS": "detect_leaks=0"})
rows = {r["backend"]: r for r in read_csv(os.path.join(out_dir, "compare.csv"))}
check(sorted(rows) == sorted(backends + ["nope"]), "compare.csv rows: %s" % sorted(rows))
check(rows["nope"]["status"] == "failed" and "nope" in rows["nope"]["reason"],
      "the unknown backend is not reported as failed with its reason: %s" % rows["nope"])
for b in backends:
    r = rows[b]
    check(r["status"] == "done", "%s: %s" % (b, r))
    check(r["ranks"] == "2" and r["steps"] == "8", "%s ran %s ranks x %s steps, expected 2 x 8" %
          (b, r["ranks"], r["steps"]))
    step, comp, comm, other = (float(r[k]) for k in ("step_ms", "compute_ms", "comm_ms", "other_ms"))
    check(comp > 0 and comm > 0, "%s: compute %g ms, comm wait %g ms: both must be measured" % (b, comp, comm))
    check(abs(comp + comm + other - step) <= 1e-3 * step + 1e-3,
          "%s: compute %g + comm %g + other %g != step %g ms" % (b, comp, comm, other, step))
    check(0 <= float(r["test_accuracy"]) <= 1 and float(r["images_per_s"]) > 0, "%s: %s" % (b, r))
    check(any(line.split()[:1] == [b] and line.rstrip().endswith("done") for line in out.splitlines()),
          "no table line for %s:\n%s" % (b, out))
# Same seed, same data, same averaging: the backends train the same model
# (up to the rounding of their reductions).
losses = [float(rows[b]["test_loss"]) for b in backends]
check(max(losses) - min(losses) < 1e-3, "backends disagree on the final test loss: %s" % losses)
check_png(os.path.join(out_dir, "compare.png"))
print("ok: %s compared (and a failed backend reported); table, CSV, PNG" % ",".join(backends))
