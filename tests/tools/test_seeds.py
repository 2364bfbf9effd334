#!/usr/bin/env python3
"""scripts/seeds: two recipes (the config as it is, and one --set) over seeds
1 and 2 on configs/cnn-synthetic.ini, 6 steps each. The table has one row
per recipe with 2/2 runs, and its mean, min, max and stdev are those of the
runs' own final metrics; each run got its seed and its recipe's setting; a
rerun skips the finished runs; a recipe whose runs fail gets a 0/2 row and
exit 1; bad arguments are refused (exit 2) before anything runs."""

import json
import os
import statistics

from toolstest import SEEDS, SOURCE_DIR, check, read_csv, run, tmpdir

SYNTHETIC = os.path.join(SOURCE_DIR, "configs", "cnn-synthetic.ini")
# Short runs and a smaller test split: about a second each on 2 cores.
FAST = ["--set", "train.total_batches=6", "--set", "data.test_size=1000"]
RECIPES = [("base", []), ("lr01", ["optimizer.lr=0.01"])]
HEADER = ["recipe", "runs", "mean acc %", "min", "max", "stdev", "images/s", "settings"]


def table(out):
    """{recipe: {column: text}} from the table at the end of seeds' output,
    and the table's text (header line onwards)."""
    lines = out.splitlines()
    starts = [i for i, l in enumerate(lines) if l.split()[:2] == ["recipe", "runs"]]
    check(len(starts) == 1, "expected one table header in the output:\n" + out)
    body = lines[starts[0]:]
    check(set(body[1].replace(" ", "")) == {"-"}, "no dashes under the table header:\n" + out)
    rows = {}
    for line in body[2:]:
        cells = line.split()
        check(len(cells) == len(HEADER), "table row with %d cells, expected %d: %r" % (len(cells), len(HEADER), line))
        check(cells[0] not in rows, "recipe %s has two rows:\n%s" % (cells[0], out))
        rows[cells[0]] = dict(zip(["recipe", "runs", "mean", "min", "max", "stdev", "ips", "settings"], cells))
    return rows, "\n".join(body) + "\n"


def final_metrics(run_dir):
    final = None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                ev = json.loads(line)
                if ev.get("event") == "final":
                    final = ev
    check(final is not None, "%s/metrics.jsonl has no final event" % run_dir)
    return final


def near(printed, value, decimals):
    """printed (rounded to decimals) is value, up to that rounding."""
    return abs(float(printed) - value) <= 0.5 * 10 ** -decimals + 1e-6


out_dir = os.path.join(tmpdir("seeds"), "s")
cmd = [SEEDS, SYNTHETIC, "--seeds", "1,2", "--out", out_dir] + FAST
for name, sets in RECIPES:
    cmd += ["--recipe", "%s=%s" % (name, ",".join(sets))]
out, err = run(cmd, timeout=120)
rows, text = table(out)
check(list(rows) == [n for n, _ in RECIPES], "table rows %s, expected %s" % (list(rows), [n for n, _ in RECIPES]))
with open(os.path.join(out_dir, "seeds.txt")) as f:
    saved = f.read()
check(saved == "%s, seeds 1,2\n%s" % (SYNTHETIC, text), "seeds.txt differs from the printed table:\n" + saved)

losses = {}
for name, sets in RECIPES:
    row = rows[name]
    check(row["runs"] == "2/2", "%s: runs %s, expected 2/2" % (name, row["runs"]))
    check(row["settings"] == (" ".join(sets) or "-"), "%s: settings column %r" % (name, row["settings"]))
    results = read_csv(os.path.join(out_dir, name, "results.csv"))
    check(sorted(r["experiment.seed"] for r in results) == ["1", "2"],
          "%s: results.csv seeds %s" % (name, [r["experiment.seed"] for r in results]))
    acc, ips = [], []
    for r in results:
        run_dir = os.path.join(out_dir, name, r["run"])
        check(r["status"] == "done", "%s seed %s: %s %s" % (name, r["experiment.seed"], r["status"], r["reason"]))
        # The seed and the recipe's setting reached dmnist-run.
        with open(os.path.join(run_dir, "command.txt")) as f:
            argv = f.read().split()
        check("experiment.seed=%s" % r["experiment.seed"] in argv, "%s: %s" % (run_dir, " ".join(argv)))
        for s in sets + ["train.total_batches=6"]:
            check(s in argv, "%s: no --set %s in %s" % (run_dir, s, " ".join(argv)))
        if not sets:
            check(not any(a.startswith("optimizer.") for a in argv), "%s: %s" % (run_dir, " ".join(argv)))
        final = final_metrics(run_dir)
        check(final["steps"] == 6, "%s ran %s steps, expected 6" % (run_dir, final["steps"]))
        acc.append(100.0 * final["test_accuracy"])
        ips.append(final["images_per_s"])
        losses[(name, r["experiment.seed"])] = final["test_loss"]
    # The table's numbers are the runs' own final metrics.
    for col, value, decimals in (("mean", statistics.mean(acc), 2), ("min", min(acc), 2), ("max", max(acc), 2),
                                 ("stdev", statistics.stdev(acc), 2)):
        check(near(row[col], value, decimals), "%s: %s %s, the runs' accuracies %s give %.4f" %
              (name, col, row[col], acc, value))
    check(abs(float(row["ips"]) - statistics.mean(ips)) <= 0.5 + 1e-5 * statistics.mean(ips),
          "%s: images/s %s, the runs give %s" % (name, row["ips"], ips))
# Two seeds, two models (different initial weights); the setting changes the model too.
for name, _ in RECIPES:
    check(losses[(name, "1")] != losses[(name, "2")], "%s: seeds 1 and 2 gave the same test loss %g: seed ignored?"
          % (name, losses[(name, "1")]))
check(losses[("base", "1")] != losses[("lr01", "1")], "lr=0.01 and the config's lr gave the same test loss")

# The same command again: every run is finished, none is started, same table.
stamps = {(n, d): os.path.getmtime(os.path.join(out_dir, n, d, "metrics.jsonl"))
          for n, _ in RECIPES for d in os.listdir(os.path.join(out_dir, n)) if d.startswith("np1_")}
check(len(stamps) == 4, "expected 4 run folders, found %s" % sorted(stamps))
out2, _ = run(cmd, timeout=60)
check(out2.count("(2 already finished, skipped)") == 2, "the rerun did not skip 2 runs per recipe:\n" + out2)
check("[1/2]" not in out2, "the rerun started runs:\n" + out2)
check(table(out2)[1] == text, "the rerun's table differs:\n%s\n%s" % (text, table(out2)[1]))
for n, _ in RECIPES:
    for d in os.listdir(os.path.join(out_dir, n)):
        if d.startswith("np1_"):
            check(os.path.getmtime(os.path.join(out_dir, n, d, "metrics.jsonl")) == stamps[(n, d)],
                  "the rerun rewrote %s/%s" % (n, d))

# A recipe whose runs fail: a 0/2 row, exit 1 (the runs fail at start-up).
out_dir2 = os.path.join(tmpdir("seeds-fail"), "s")
out, _ = run([SEEDS, SYNTHETIC, "--seeds", "1,2", "--out", out_dir2, "--recipe", "neg=optimizer.lr=-1"] + FAST,
             expect=1, timeout=60)
row = table(out)[0].get("neg")
check(row and row["runs"] == "0/2" and row["mean"] == "-", "the failing recipe's row: %s\n%s" % (row, out))

# Bad arguments: exit 2, one error line naming the problem, nothing run.
out_dir3 = os.path.join(tmpdir("seeds-bad"), "s")
for args, what in ((["--seeds", "1,x"], "--seeds 1,x"),
                   (["--seeds", "1,2,1"], "given twice"),
                   (["--recipe", "bad"], "--recipe bad"),
                   (["--recipe", "s=experiment.seed=3"], "the seed is set by --seeds"),
                   (["--recipe", "a=lr"], "expected SECTION.KEY=VALUE"),
                   (["--set", "experiment.seed=3"], "the seed is set by --seeds")):
    out, err = run([SEEDS, SYNTHETIC, "--out", out_dir3] + FAST + args, expect=2, timeout=30)
    errors = [l for l in err.splitlines() if "error" in l]
    check(len(errors) == 1 and errors[0].startswith("seeds: error: ") and what in errors[0],
          "%s: expected one 'seeds: error: ... %s' line, got:\n%s" % (" ".join(args), what, err))
    check(not os.path.exists(out_dir3), "%s: %s was created" % (" ".join(args), out_dir3))
print("ok: 2 recipes x 2 seeds, table = the runs' metrics, seeds passed, rerun skipped all 4; "
      "failing recipe 0/2; 6 bad arguments refused")
