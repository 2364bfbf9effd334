#!/usr/bin/env python3
"""Search CPU time-to-accuracy recipes: models built from the shipped layer
plugins, batch, learning rate and run length, each run with
train.target_accuracy so it stops at its first evaluation at or above the
target. Prints one line per run (model, recipe, seed, time to target or
"not reached", best accuracy) and a ranking by the worst time over seeds.

  scripts/bench/tta_search.py --models c16.p.c32.p.d128,c32.p.c64.p.d128 \\
      --batch 128 --lr 0.002,0.004 --epochs 1.5,2 --seeds 1,2 [--threads 2]

A model is a dot-separated list: cN (3x3 conv, N filters, ReLU), cN5 (5x5),
p (2x2 max pool), dN (dense N, ReLU), xP (dropout P percent, e.g. x25); flatten,
the 10 logits and the loss are added. Recipe: Adam, standardised pixels, a
linear warm-up (--warmup steps) then a linear decay to 0 over the run
(one-cycle); evaluation --evals-per-epoch times per epoch, from
--eval-from (a fraction of the run) on. --write FILE writes the INI of the
first combination instead of running (how configs/speedrun-cpu.ini began).
--full runs every recipe to its end (no target_accuracy stop) and reports
the first evaluation at or above the target and the final accuracy: on a
busy machine the times mean little, the steps do.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = 60000


def layers(model):
    out, n = [], {"c": 0, "p": 0, "d": 0, "x": 0}
    for tok in model.split("."):
        kind = tok[0]
        n[kind] += 1
        name = "%s%d" % ({"c": "conv", "p": "pool", "d": "dense", "x": "drop"}[kind], n[kind])
        if kind == "c":
            filt, k = (tok[1:-1], 5) if tok.endswith("5") and len(tok) > 2 and tok[-2] == "k" else (tok[1:], 3)
            out.append((name, {"type": "conv2d", "filters": filt, "kernel": k, "activation": "relu"}))
        elif kind == "p":
            out.append((name, {"type": "maxpool2d", "pool": 2}))
        elif kind == "d":
            if not any(l[1]["type"] == "flatten" for l in out):
                out.append(("flatten", {"type": "flatten"}))
            out.append((name, {"type": "dense", "units": tok[1:], "activation": "relu"}))
        elif kind == "x":
            out.append((name, {"type": "dropout", "rate": int(tok[1:]) / 100}))
    if not any(l[1]["type"] == "flatten" for l in out):
        out.append(("flatten", {"type": "flatten"}))
    out.append(("logits", {"type": "dense", "units": 10}))
    out.append(("loss", {"type": "softmax_cross_entropy"}))
    return out


def ini(model, batch, lr, epochs, warmup, evals_per_epoch, eval_from, target, seed, threads):
    steps_per_epoch = TRAIN // batch
    total = int(round(epochs * steps_per_epoch))
    every = max(1, steps_per_epoch // evals_per_epoch)
    s = ["[experiment]", "name = tta-search", "seed = %d" % seed, "device = cpu", "backend = local",
         "threads = %d" % threads, "",
         "[data]", "type = mnist", "path = %s/data/mnist" % ROOT, "batch_size = %d" % batch,
         "eval_batch_size = 1000", "standardize = true", "",
         "[train]", "epochs = %g" % epochs, "log_every = 0", "eval_every = %d" % every,
         "target_accuracy = %g" % target, "",
         "[optimizer]", "type = adam", "lr = %g" % lr, "warmup_steps = %d" % warmup,
         "schedule = linear", ""]
    for name, keys in layers(model):
        s.append("[layer.%s]" % name)
        s += ["%s = %s" % kv for kv in keys.items()]
        s.append("")
    return "\n".join(s), total, every


def run(cfg_text, dmnist, timeout, target):
    with tempfile.TemporaryDirectory() as d:
        cfg, met = os.path.join(d, "c.ini"), os.path.join(d, "m.jsonl")
        open(cfg, "w").write(cfg_text)
        t0 = time.time()
        p = subprocess.run([dmnist, cfg, "--no-progress", "--metrics", met], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
        wall = time.time() - t0
        if p.returncode:
            sys.exit("dmnist-run failed:\n" + p.stdout[-2000:] + p.stderr[-2000:])
        ev = [json.loads(l) for l in open(met) if l.startswith("{")]
        hit = [e for e in ev if e["event"] == "target"] or \
            [e for e in ev if e["event"] == "eval" and e["test_accuracy"] >= target]
        final = [e["test_accuracy"] for e in ev if e["event"] == "final"]
        return (hit[0]["time_s"], hit[0]["step"]) if hit else (None, None), final[-1] if final else 0, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="c16.p.c32.p.d128")
    ap.add_argument("--batch", default="128")
    ap.add_argument("--lr", default="0.003")
    ap.add_argument("--epochs", default="2")
    ap.add_argument("--warmup", default="100")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--evals-per-epoch", type=int, default=4)
    ap.add_argument("--eval-from", type=float, default=0.0, help="(unused by dmnist: every eval counts)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--write", metavar="FILE")
    ap.add_argument("--full", action="store_true", help="no early stop: run each recipe to its end")
    a = ap.parse_args()
    dmnist = os.path.join(a.build, "dmnist-run")
    grid = list(itertools.product(a.models.split(","), [int(b) for b in a.batch.split(",")],
                                  [float(x) for x in a.lr.split(",")], [float(x) for x in a.epochs.split(",")],
                                  [int(x) for x in a.warmup.split(",")]))
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.write:
        m, b, lr, ep, wu = grid[0]
        open(a.write, "w").write(ini(m, b, lr, ep, wu, a.evals_per_epoch, a.eval_from, a.target, seeds[0],
                                     a.threads)[0])
        return 0
    rows = []
    for m, b, lr, ep, wu in grid:
        times = []
        for seed in seeds:
            text, total, every = ini(m, b, lr, ep, wu, a.evals_per_epoch, a.eval_from, a.target, seed, a.threads)
            if a.full:
                text = text.replace("target_accuracy = %g" % a.target, "target_accuracy = 0")
            (t, step), best, wall = run(text, dmnist, a.timeout, a.target)
            times.append(t)
            print("%-24s batch %4d lr %-6g epochs %-4g warmup %-4d seed %d: %s  final %.4f  (wall %.1f s, load %s)"
                  % (m, b, lr, ep, wu, seed, "%.2f s at step %d/%d" % (t, step, total) if t else "not reached",
                     best, wall, open("/proc/loadavg").read().split()[0]), flush=True)
        worst = max(times) if all(times) else float("inf")
        rows.append((worst, m, b, lr, ep, wu, sum(t is not None for t in times)))
    print("\nranked by the worst time over seeds %s:" % a.seeds)
    for worst, m, b, lr, ep, wu, n in sorted(rows):
        print("  %-8s %-24s batch %4d lr %-6g epochs %-4g warmup %d (%d/%d reached)"
              % ("%.2f s" % worst if worst != float("inf") else "-", m, b, lr, ep, wu, n, len(seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
