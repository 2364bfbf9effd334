#!/usr/bin/env python3
"""An interrupted sweep resumes without rerunning finished runs.

dmnist-run is wrapped by a script that logs each call and, while a flag file
exists, makes the third and later runs train (nearly) forever. The sweep (one
run at a time) is interrupted with SIGINT once two runs have finished and the
third is training; that run's launcher and rank must both be stopped. The
same command then runs only the two unfinished runs and leaves the finished
ones' files untouched."""

import json
import os
import signal
import subprocess
import time

from toolstest import DMNIST_RUN, SWEEP, TINY, BUILD_DIR, check, fail, need_gloo, read_csv, tmpdir

need_gloo()
tmp = tmpdir("resume")
calls, slow = (os.path.join(tmp, n) for n in ("calls.log", "slow"))
wrapper = os.path.join(tmp, "dmnist-run-wrapper")
with open(wrapper, "w") as f:
    f.write("""#!/bin/bash
echo "$*" >> '%s'
if [ -e '%s' ] && [ "$(wc -l < '%s')" -gt 2 ]; then
    exec '%s' --set train.total_batches=100000000 --set train.log_every=0 "$@"
fi
exec '%s' "$@"
""" % (calls, slow, calls, DMNIST_RUN, DMNIST_RUN))
os.chmod(wrapper, 0o755)
open(slow, "w").close()

out_dir = os.path.join(tmp, "sw")
cmd = [SWEEP, TINY, "optimizer.lr=0.01,0.05", "data.batch_size=16,32", "--jobs", "1", "--no-plots",
       "--dmnist-run", wrapper, "--out", out_dir]
env = dict(os.environ, DMNIST_BUILD_DIR=BUILD_DIR)


def n_calls():
    try:
        with open(calls) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def done_runs():
    found = []
    for d in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
        try:
            with open(os.path.join(out_dir, d, "status.json")) as f:
                if json.load(f)["status"] == "done":
                    found.append(d)
        except (FileNotFoundError, NotADirectoryError):
            pass
    return found


def third_training():
    log = os.path.join(out_dir, "np1_optimizer.lr=0.05_data.batch_size=16", "log.txt")
    try:
        with open(log) as f:
            return "parameters" in f.read()  # the rank's first line (it logs no steps)
    except FileNotFoundError:
        return False


def leftovers():
    """Processes (other than this test) whose command line names the sweep's folder."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    if out_dir.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
deadline = time.monotonic() + 90
while not (n_calls() >= 3 and len(done_runs()) >= 2 and third_training()):
    if p.poll() is not None or time.monotonic() > deadline:
        p.kill()
        out, err = p.communicate()
        fail("the sweep did not reach its third run (calls %d, done %s):\n%s\n%s" % (n_calls(), done_runs(), out, err))
    time.sleep(0.05)
finished = done_runs()
check(len(finished) == 2, "expected 2 finished runs before the interruption, found %s" % finished)
check(len(leftovers()) >= 2, "the third run should have a launcher and a rank running: %s" % leftovers())
p.send_signal(signal.SIGINT)
try:
    out, err = p.communicate(timeout=30)
except subprocess.TimeoutExpired:
    p.kill()
    fail("the sweep did not stop within 30 s of SIGINT")
check(p.returncode == 130, "interrupted sweep exited %d, expected 130\n%s\n%s" % (p.returncode, out, err))
check("resume" in err, "no hint on resuming after the interruption:\n" + err)
for _ in range(100):  # the interrupted run's launcher and rank must be gone
    left = leftovers()
    if not left:
        break
    time.sleep(0.05)
else:
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    fail("processes of the interrupted run were left running: %s" % left)
rows = {r["run"]: r for r in read_csv(os.path.join(out_dir, "results.csv"))}
check(sorted(r for r in rows if rows[r]["status"] == "done") == finished,
      "results.csv after the interruption: %s" % {k: v["status"] for k, v in rows.items()})

# Resume: the finished runs' files must not change.
def snapshot(run):
    path = os.path.join(out_dir, run, "metrics.jsonl")
    with open(path, "rb") as f:
        return os.stat(path).st_mtime_ns, f.read()


before = {r: snapshot(r) for r in finished}
os.remove(slow)
os.remove(calls)
p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
check(p.returncode == 0, "resumed sweep exited %d:\n%s\n%s" % (p.returncode, p.stdout, p.stderr))
check("(2 already finished, skipped)" in p.stdout, "the resumed sweep did not report 2 skipped runs:\n" + p.stdout)
check(n_calls() == 2, "the resumed sweep started dmnist-run %d times, expected 2 (the unfinished runs)" % n_calls())
with open(calls) as f:
    started = f.read()
for r in finished:
    lr, bs = r.split("optimizer.lr=")[1].split("_data.batch_size=")
    check("optimizer.lr=%s --set data.batch_size=%s " % (lr, bs) not in started,
          "finished run %s was started again:\n%s" % (r, started))
    check(snapshot(r) == before[r], "finished run %s's metrics were rewritten" % r)
rows = read_csv(os.path.join(out_dir, "results.csv"))
check(len(rows) == 4 and all(r["status"] == "done" for r in rows),
      "after resuming: %s" % [(r["run"], r["status"]) for r in rows])
print("ok: interrupted after 2 of 4 runs; resume ran exactly the other 2")
