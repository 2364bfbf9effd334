#!/usr/bin/env python3
"""sweep --slurm without a Slurm: the options' usage errors (exit 2, one
line naming the option), a missing sbatch, the parsers of Slurm's answers,
and a whole array through stand-in Slurm commands on PATH (tests/slurm's
array case runs a real Slurm, where there is one):

  sbatch    runs the batch script at once, task by task, with the task's
            SLURM_ARRAY_TASK_ID, and prints job id 77 (logged)
  srun      drops its options and runs the command as rank 0 of 1
  scontrol  "Invalid job id specified", and sacct fails (no accounting):
            the sweep must fall back on each task's exit_code file

A 1x2 grid with one bad value: one task COMPLETED and done, one FAILED with
dmnist-run's error line as the reason; the rerun submits the failed run
alone."""

import os
import sys

from toolstest import COMPARE, SEEDS, SOURCE_DIR, SWEEP, TINY, check, need_gloo, read_csv, run, tmpdir

sys.path.insert(0, os.path.join(SOURCE_DIR, "scripts"))
import dmnist_experiments as dx  # noqa: E402

# Usage errors, before anything is submitted.
for args, word in ((["--sbatch=-p debug"], "--sbatch"), (["--slurm", "--timeout", "5"], "--timeout"),
                   (["--slurm", "--sbatch=--array=1-3"], "--array"), (["--slurm", "--sbatch", "'open"], "--sbatch"),
                   (["--slurm", "--wait-max", "-1"], "--wait-max"), (["--wait-max", "5"], "--wait-max")):
    _, err = run([SWEEP, TINY, "--out", os.path.join(tmpdir("usage"), "o")] + args, expect=2)
    last = err.strip().splitlines()[-1]
    check(last.startswith("sweep: error: ") and word in last, "sweep %s: %r" % (" ".join(args), last))
_, err = run([COMPARE, TINY, "--wait-max", "5"], expect=2)
check("--slurm" in err, "compare-backends --wait-max without --slurm: %r" % err)
_, err = run([SEEDS, TINY, "--sbatch=-p debug", "--out", os.path.join(tmpdir("usage"), "o")], expect=2)
check("--sbatch" in err, "seeds --sbatch without --slurm: %r" % err)

# No sbatch at all: one line, exit 2.
nowhere = tmpdir("nowhere")
_, err = run([sys.executable, SWEEP, TINY, "--slurm", "--out", os.path.join(nowhere, "o")], expect=2,
             env={"PATH": nowhere})
check(err.strip() == "sweep: sbatch not found: --slurm needs Slurm's client commands (Debian: slurm-client)",
      "without sbatch: %r" % err)

# Slurm's notations.
for spec, ids in (("3", [3]), ("1,4-6", [1, 4, 5, 6]), ("0-7:2%2", [0, 2, 4, 6]), ("2-3%1", [2, 3])):
    check(dx.expand_task_ids(spec) == ids, "ArrayTaskId %s: %s" % (spec, dx.expand_task_ids(spec)))
for text, s in (("00:00:07", 7), ("1-02:03:04", 93784), ("Unknown", None)):
    check(dx.hms_seconds(text) == s, "RunTime %s: %s" % (text, dx.hms_seconds(text)))
check(dx.slurm_exit({"state": "FAILED", "exit_code": "2:0"}) == 2, "FAILED 2:0 is exit code 2")
check(dx.slurm_exit({"state": "CANCELLED", "exit_code": "0:15"}) == "cancelled", "CANCELLED is no exit code")
line = dx.slurm_task_line(4, ["dmnist-run", "--set", "a.b=c d"], "/x/r", 2, True)
check("srun --ntasks=2 --kill-on-bad-exit=1 --mpi=${SLURM_MPI_TYPE:-pmix} dmnist-run --set 'a.b=c d' "
      "--set experiment.threads=${SLURM_CPUS_PER_TASK:-1} >/x/r/log.txt" in line, "task line of an mpi run:\n" + line)
line = dx.slurm_task_line(0, ["dmnist-run", "--set", "experiment.threads=3"], "/x/r", 1, False)
check("srun --ntasks=1 --kill-on-bad-exit=1 dmnist-run --set experiment.threads=3 >/x/r/log.txt" in line,
      "task line with its own threads:\n" + line)

# A whole array through stand-ins.
need_gloo()
tmp = tmpdir("fake-slurm")
bin_dir = os.path.join(tmp, "bin")
os.makedirs(bin_dir)
stand_ins = {
    "sbatch": """#!/bin/bash
echo "$*" >>"%(tmp)s/sbatch.log"
array= script=
for a in "$@"; do
    case $a in --array=*) array=${a#--array=} ;; esac
    script=$a
done
for i in $(echo "${array%%\\%%*}" | tr , ' '); do
    SLURM_ARRAY_TASK_ID=$i SLURM_JOB_ID=$((100 + i)) bash "$script" >/dev/null 2>&1
done
echo 77
""",
    "srun": """#!/bin/bash
while [ "${1#--}" != "$1" ]; do shift; done
export DMNIST_RANK=0 DMNIST_WORLD_SIZE=1 DMNIST_LOCAL_RANK=0 DMNIST_LOCAL_WORLD_SIZE=1  # as a launcher does
exec "$@"
""",
    "scontrol": """#!/bin/bash
echo "slurm_load_jobs error: Invalid job id specified" >&2
exit 1
""",
    "sacct": """#!/bin/bash
echo "sacct: error: Slurm accounting storage is disabled" >&2
exit 1
""",
}
for name, text in stand_ins.items():
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
        f.write(text % {"tmp": tmp} if name == "sbatch" else text)
    os.chmod(path, 0o755)
env = {"PATH": bin_dir + os.pathsep + os.environ["PATH"]}
out_dir = os.path.join(tmp, "sw")
cmd = [SWEEP, TINY, "optimizer.lr=-1,0.05", "--slurm", "--sbatch=--time=5 --partition=x", "--no-plots",
       "--out", out_dir]
out, err = run(cmd, expect=1, env=env)
rows = {r["optimizer.lr"]: r for r in read_csv(os.path.join(out_dir, "results.csv"))}
good, bad = rows["0.05"], rows["-1"]
check((good["status"], good["slurm_job"], good["slurm_state"], good["slurm_exit"]) == ("done", "77_1", "COMPLETED",
                                                                                       "0:0"), "good run: %s" % good)
check(good["steps"] == "16", "good run: %s steps, tiny.ini has 16" % good["steps"])
check((bad["status"], bad["slurm_job"], bad["slurm_state"], bad["slurm_exit"]) == ("failed", "77_0", "FAILED", "2:0"),
      "bad run: %s" % bad)
check("'lr' = -1 is out of range" in bad["reason"], "bad run's reason: %r" % bad["reason"])
check("[2/2] np=1 optimizer.lr=0.05  task 77_1 COMPLETED  done" in out, "no progress line for 77_1:\n" + out)
with open(os.path.join(tmp, "sbatch.log")) as f:
    first = f.read().split()
check("--array=0,1" in first and "--ntasks=1" in first and first[-3:-1] == ["--time=5", "--partition=x"],
      "sbatch's arguments: %s" % first)
os.remove(os.path.join(tmp, "sbatch.log"))
out, err = run(cmd, expect=1, env=env)
check("(1 already finished, 0 queued or running, 1 to submit)" in out, "the rerun's plan:\n" + out)
with open(os.path.join(tmp, "sbatch.log")) as f:
    again = f.read().split()
check("--array=0" in again, "the rerun submitted %s, expected the failed run (task 0) alone" % again)
print("ok: usage errors, no sbatch, Slurm's notations; an array through stand-ins: done, failed, failed one resubmitted")
