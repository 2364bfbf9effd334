#!/usr/bin/env python3
"""Search a grid of training recipes, then confirm the best on fresh seeds.

  scripts/bench/recipe_search.py configs/cnn-gpu.ini \\
      optimizer.lr=0.002,0.003 optimizer.beta2=0.99,0.999 --seeds 1,2 --confirm-seeds 3,4,5,6,7 --top 4

Stage 1 (screen): every combination of the grid, once per --seeds seed
(scripts/sweep, OUT/screen), ranked by mean test accuracy. Stage 2
(confirm): the --top best recipes and the config as it is, on the
--confirm-seeds, which the screen did not see (scripts/seeds, OUT/confirm):
picking the best of many recipes by their screening accuracy flatters them,
so only the confirmation says what a recipe is worth. Options not listed
here (--dmnist-run, --set, --timeout) go to both stages.
"""

import argparse
import collections
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
sys.path.insert(0, SCRIPTS)
import dmnist_experiments as dx  # noqa: E402


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("grid", nargs="+", metavar="SECTION.KEY=V1,V2,...")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--confirm-seeds", default="3,4,5,6,7")
    p.add_argument("--top", type=int, default=4)
    p.add_argument("--out", default="recipe-search")
    a, rest = p.parse_known_args(argv)
    if any(g.startswith("experiment.seed=") for g in a.grid):
        p.error("the seeds are --seeds and --confirm-seeds, not a grid key")

    screen = os.path.join(a.out, "screen")
    rc = subprocess.call([sys.executable, os.path.join(SCRIPTS, "sweep"), a.config] + a.grid +
                         ["experiment.seed=" + a.seeds, "--out", screen, "--no-plots"] + rest)
    if rc == 2:
        return 2
    keys = [g.split("=", 1)[0] for g in a.grid]
    acc = collections.defaultdict(list)
    for r in dx.read_results(os.path.join(screen, "results.csv")):
        if r["status"] == "done":
            acc[tuple(r[k] for k in keys)].append(100.0 * float(r["test_accuracy"]))
    n_seeds = len(a.seeds.split(","))
    ranked = sorted(((statistics.mean(v), k) for k, v in acc.items() if len(v) == n_seeds), reverse=True)
    print("\nscreen: %d recipes x seeds %s, best first" % (len(ranked), a.seeds))
    for m, k in ranked[:max(a.top * 2, 8)]:
        print("  %.2f  %s" % (m, " ".join("%s=%s" % kv for kv in zip(keys, k))))

    recipes = ["config="]
    for i, (m, k) in enumerate(ranked[:a.top]):
        recipes.append("top%d=%s" % (i + 1, ",".join("%s=%s" % kv for kv in zip(keys, k))))
    cmd = [sys.executable, os.path.join(SCRIPTS, "seeds"), a.config, "--seeds", a.confirm_seeds,
           "--out", os.path.join(a.out, "confirm")]
    for r in recipes:
        cmd += ["--recipe", r]
    print("\nconfirm on seeds %s:" % a.confirm_seeds, flush=True)
    return subprocess.call(cmd + rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
