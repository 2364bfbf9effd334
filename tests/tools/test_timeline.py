#!/usr/bin/env python3
"""--timeline with 2 ranks (gloo): FILE is one valid JSON Chrome trace that
holds, for every rank and every step, data loading, the forward and backward
span of every layer, the start and wait of every gradient bucket, the
optimizer step; spans on a rank's track nest properly; no part files remain.

Expected layers and buckets come from the config, not from the trace:
tests/tools/tiny.ini sets fusion_mb = 0 (one bucket per layer with
parameters), and the run is repeated with one fused bucket."""

import configparser
import json
import os
import shutil

from toolstest import DMNIST_RUN, SOURCE_DIR, TINY, check, check_png, fail, need_gloo, run, tmpdir

need_gloo()
tmp = tmpdir("timeline")

ini = configparser.ConfigParser(inline_comment_prefixes=(";",))
ini.read(TINY)
layers = [s.split(".", 1)[1] for s in ini.sections() if s.startswith("layer.")]
with_params = [s.split(".", 1)[1] for s in ini.sections()
               if s.startswith("layer.") and ini[s]["type"] in ("conv2d", "dense")]
STEPS = 8  # total_batches 16 over 2 ranks


def check_trace(path, n_buckets, what):
    try:
        with open(path) as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail("%s: %s is not valid JSON: %s" % (what, path, e))
    events = trace.get("traceEvents")
    check(isinstance(events, list) and events, "%s: no traceEvents list" % what)
    for e in events:
        for key in ("ph", "name", "pid", "tid"):
            check(key in e, "%s: event without %r: %s" % (what, key, e))
        if e["ph"] == "X":
            check(isinstance(e["ts"], (int, float)) and e["dur"] >= 0, "%s: bad span %s" % (what, e))
    for rank in (0, 1):
        mine = [e for e in events if e["pid"] == rank]
        names = {e["args"]["name"] for e in mine if e["ph"] == "M" and e["name"] == "process_name"}
        check(names == {"rank %d" % rank}, "%s: rank %d's process is named %s" % (what, rank, names))
        spans = [e for e in mine if e["ph"] == "X"]
        for step in range(1, STEPS + 1):
            at = {e["name"] for e in spans if e.get("args", {}).get("step") == step}
            want = {"step %d" % step, "data", "forward", "backward", "optimizer", "allreduce wait"}
            want |= {"forward " + l for l in layers} | {"backward " + l for l in layers}
            want |= {"allreduce start bucket %d" % b for b in range(n_buckets)}
            want |= {"allreduce wait bucket %d" % b for b in range(n_buckets)}
            missing = want - at
            check(not missing, "%s: rank %d step %d lacks %s" % (what, rank, step, sorted(missing)))
            extra = {n for n in at if n.startswith("allreduce start bucket")} - want
            check(not extra, "%s: rank %d step %d has unexpected buckets %s" % (what, rank, step, sorted(extra)))
        # in-flight spans: a begin and an end per bucket and step
        for ph in ("b", "e"):
            n = sum(1 for e in mine if e["ph"] == ph and e["name"].startswith("allreduce bucket"))
            check(n == STEPS * n_buckets, "%s: rank %d has %d '%s' bucket events, expected %d" %
                  (what, rank, n, ph, STEPS * n_buckets))
        # spans on one track nest: each starts after and ends before any open parent ends
        stack = []
        for e in sorted(spans, key=lambda e: (e["ts"], -e["dur"])):
            end = e["ts"] + e["dur"]
            while stack and stack[-1][0] <= e["ts"] + 1e-6:  # ts + dur is summed in floating point
                stack.pop()
            if stack:
                check(end <= stack[-1][0] + 1e-3, "%s: rank %d: span %r [%g, %g] overlaps the end of %r at %g" %
                      (what, rank, e["name"], e["ts"], end, stack[-1][1], stack[-1][0]))
            stack.append((end, e["name"]))
        # layer spans of a step sit inside that step's forward/backward span
        for step in (1, STEPS):
            at = [e for e in spans if e.get("args", {}).get("step") == step]
            fwd = next(e for e in at if e["name"] == "forward")
            for e in at:
                if e["name"].startswith("forward "):
                    check(fwd["ts"] <= e["ts"] and e["ts"] + e["dur"] <= fwd["ts"] + fwd["dur"] + 1e-3,
                          "%s: rank %d step %d: %r is outside 'forward'" % (what, rank, step, e["name"]))
    check(not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".part")],
          "%s: rank part files were left behind" % what)


path = os.path.join(tmp, "trace.json")
out, _ = run([DMNIST_RUN, "--np", "2", "--timeline", path, TINY], timeout=120)
check("timeline: " + path in out, "rank 0 did not report the trace:\n" + out)
check_trace(path, len(with_params), "fusion_mb=0")

path2 = os.path.join(tmp, "fused.json")
run([DMNIST_RUN, "--np", "2", "--timeline", path2, "--set", "train.fusion_mb=100", TINY], timeout=120)
check_trace(path2, 1, "fusion_mb=100")

# The PNG rendering of two steps (scripts/plot-timeline), when gnuplot is there.
if shutil.which("gnuplot"):
    png = os.path.join(tmp, "trace.png")
    run([os.path.join(SOURCE_DIR, "scripts", "plot-timeline"), path, "--steps", "2-3", "--out", png])
    check_png(png)
    _, err = run([os.path.join(SOURCE_DIR, "scripts", "plot-timeline"), path, "--steps", "50-60"], expect=2)
    check("no events for steps 50-60" in err, "plot-timeline on absent steps said:\n" + err)

# A folder that does not exist: one clear line, no crash.
_, err = run([DMNIST_RUN, "--timeline", os.path.join(tmp, "no", "such", "t.json"), "--set",
              "experiment.backend=local", TINY], expect=1)
check("cannot open for writing" in err, "unwritable timeline path gave:\n" + err)
print("ok: 2 ranks x %d steps x %d layers, %d buckets (and 1 fused); nesting valid" %
      (STEPS, len(layers), len(with_params)))
