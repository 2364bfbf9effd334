#!/usr/bin/env python3
"""scripts/sweep end to end: a 2x2 grid (two runs at a time) gives 4 done
rows whose metrics show that each run got its own values, and PNG plots; a
grid with a bad value records that run as failed and finishes the others."""

import os

from toolstest import SWEEP, TINY, check, check_png, need_gloo, need_gnuplot, read_csv, run, tmpdir

need_gloo()
need_gnuplot()
out_dir = os.path.join(tmpdir("sweep"), "sw")
out, err = run([SWEEP, TINY, "optimizer.lr=0.01,0.05", "data.batch_size=16,32", "--jobs", "2", "--out", out_dir],
               timeout=240)
check("[4/4]" in out, "no '[4/4]' progress line in the output:\n" + out)
check("ETA" in out, "no ETA in the progress lines:\n" + out)
rows = read_csv(os.path.join(out_dir, "results.csv"))
check(len(rows) == 4, "results.csv has %d rows, expected 4" % len(rows))
combos = sorted((r["optimizer.lr"], r["data.batch_size"]) for r in rows)
check(combos == [("0.01", "16"), ("0.01", "32"), ("0.05", "16"), ("0.05", "32")], "runs cover %s" % combos)
for r in rows:
    check(r["status"] == "done", "run %s: status %s (%s)" % (r["run"], r["status"], r["reason"]))
    # The swept value reached dmnist-run: its final metrics report it.
    check(r["batch_size"] == r["data.batch_size"], "run %s trained with batch %s" % (r["run"], r["batch_size"]))
    check(r["steps"] == "16", "run %s: %s steps, tiny.ini has 16" % (r["run"], r["steps"]))
    acc = float(r["test_accuracy"])
    check(0 <= acc <= 1, "run %s: test accuracy %g" % (r["run"], acc))
    check(float(r["images_per_s"]) > 0, "run %s: images/s %s" % (r["run"], r["images_per_s"]))
    check(os.path.isfile(os.path.join(out_dir, r["run"], "metrics.jsonl")), "run %s has no metrics" % r["run"])
# Different learning rates must give different models.
by = {(r["optimizer.lr"], r["data.batch_size"]): float(r["test_loss"]) for r in rows}
check(by[("0.01", "16")] != by[("0.05", "16")], "lr 0.01 and 0.05 gave the same test loss: override ignored?")
for png in ("acc_vs_optimizer.lr.png", "acc_vs_data.batch_size.png", "ips_vs_np.png"):
    check_png(os.path.join(out_dir, png))

# A failing run is recorded and the sweep goes on (exit 1 at the end).
out_dir2 = os.path.join(tmpdir("sweep-fail"), "sw")
out, err = run([SWEEP, TINY, "optimizer.lr=-1,0.05", "--out", out_dir2], expect=1, timeout=120)
rows = {r["optimizer.lr"]: r for r in read_csv(os.path.join(out_dir2, "results.csv"))}
check(rows["-1"]["status"] == "failed", "the lr=-1 run is %s, expected failed" % rows["-1"]["status"])
check("lr" in rows["-1"]["reason"], "the failure reason does not name the key: %r" % rows["-1"]["reason"])
check(rows["0.05"]["status"] == "done", "the run after the failure is %s, expected done" % rows["0.05"]["status"])
check("FAILED" in out, "the progress lines do not show the failure:\n" + out)
print("ok: 2x2 sweep, 4 rows, 3 PNGs; failed run recorded, sweep went on")
