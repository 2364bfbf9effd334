"""Shared helpers of scripts/compare-backends and scripts/sweep.

Python standard library only; plots are drawn by gnuplot (Debian package
gnuplot-nox), called as a program.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(SCRIPTS_DIR)


class ToolError(Exception):
    """A one-line message for the user; the script exits with status 2."""


def find_dmnist_run(explicit=None):
    """The dmnist-run to use: --dmnist-run, $DMNIST_RUN, $DMNIST_BUILD_DIR,
    the source tree's build/ folder, then PATH."""
    candidates = []
    if explicit:
        candidates.append(explicit)
    elif os.environ.get("DMNIST_RUN"):
        candidates.append(os.environ["DMNIST_RUN"])
    else:
        if os.environ.get("DMNIST_BUILD_DIR"):
            candidates.append(os.path.join(os.environ["DMNIST_BUILD_DIR"], "dmnist-run"))
        candidates.append(os.path.join(SOURCE_DIR, "build", "dmnist-run"))
        on_path = shutil.which("dmnist-run")
        if on_path:
            candidates.append(on_path)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    raise ToolError("cannot find dmnist-run (tried %s); build it or pass --dmnist-run PATH"
                    % ", ".join(candidates or ["PATH"]))


def read_metrics(path):
    """(step events, final event or None) of a --metrics JSON-lines file.
    A torn last line (a run killed while writing) is ignored."""
    steps, final = [], None
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if ev.get("event") == "step":
                    steps.append(ev)
                elif ev.get("event") == "final":
                    final = ev
    except FileNotFoundError:
        pass
    return steps, final


def read_results(path):
    """The rows of a sweep's results.csv (dicts by column), or [] when it is missing."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def step_split(steps, final):
    """Per-step seconds of one run: (step, compute, comm wait, other).
    Step events carry the compute (forward + backward) and communication-wait
    seconds of the steps since the previous one, averaged over ranks."""
    if not final or not final.get("steps"):
        return None
    logged = steps[-1]["step"] if steps else 0
    if logged <= 0:
        return None
    compute = sum(e.get("compute_s", 0.0) for e in steps) / logged
    comm = sum(e.get("comm_wait_s", 0.0) for e in steps) / logged
    step = final["train_s"] / final["steps"] if final.get("train_s") else compute + comm
    return step, compute, comm, max(step - compute - comm, 0.0)


def failure_line(log_path):
    """The line of a run's log that says why it failed: the first error a
    rank printed, rather than the launcher's "rank N failed" that follows."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [l.rstrip() for l in f if l.strip()]
    except FileNotFoundError:
        return "(no log)"
    launcher = re.compile(r"dmnist-run: rank \d+ (failed|was killed)|^-+$|^Primary job|mpirun")
    for line in lines:
        if ("dmnist-run:" in line or "error" in line.lower()) and not launcher.search(line):
            return line
    return lines[-1] if lines else "(no output)"


def session_pids(sid):
    """Every process of session sid (Linux /proc). A run is started as a
    session leader; dmnist-run --np puts each rank in a process group of its
    own, so killing the leader's group alone would leave the ranks running."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def stop_session(proc, grace=5.0):
    """SIGTERM every process of proc's session, SIGKILL what is left after
    grace seconds, and reap proc."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and session_pids(proc.pid):
            proc.poll()
            time.sleep(0.05)
        if not session_pids(proc.pid):
            break
    proc.wait()


def list_plugins(dmnist_run):
    """{(kind, type)} of every plugin dmnist-run finds."""
    out = subprocess.run([dmnist_run, "--list-plugins"], capture_output=True, text=True)
    found = set()
    for line in out.stdout.splitlines()[1:]:
        if not line.strip():
            break  # the shadowed components follow a blank line
        parts = line.split()
        if len(parts) >= 2:
            found.add((parts[0], parts[1]))
    return found


def have_gpu():
    """True when nvidia-smi lists a GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def gnuplot_quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_gnuplot(script, script_path):
    """Write the gnuplot script next to its PNG (so users can restyle it) and
    run it. Raises ToolError with gnuplot's first error line."""
    with open(script_path, "w", encoding="utf-8") as f:
        f.write(script)
    gp = shutil.which("gnuplot")
    if not gp:
        raise ToolError("gnuplot not found: install it (Debian: apt-get install gnuplot-nox) to draw %s"
                        % os.path.basename(script_path).replace(".gp", ".png"))
    out = subprocess.run([gp, script_path], capture_output=True, text=True)
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]
        raise ToolError("gnuplot %s: %s" % (script_path, first))


def png_header():
    return "set terminal pngcairo size 900,520 font 'sans,10'\nset encoding utf8\n"


def fmt_duration(seconds):
    seconds = int(round(max(seconds, 0)))
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def print_table(headers, rows, out=sys.stdout):
    """A plain aligned text table; also returned as a string."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(str(cell)))
    lines = ["  ".join(str(h).rjust(widths[i]) for i, h in enumerate(headers)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(str(c).rjust(widths[i]) for i, c in enumerate(r)))
    text = "\n".join(lines) + "\n"
    out.write(text)
    out.flush()
    return text


# ---------------------------------------------------------------------------
# Slurm job arrays: sweep --slurm, compare-backends --slurm (seeds through
# sweep). One array job, one task per run; each task's ranks are one srun
# step. A task's record (job id, state, exit code) lives in its run folder as
# slurm.json, so a later call (resume, --no-wait then collect) finds it.

# States after which a task will not run again by itself (squeue/scontrol/sacct names).
SLURM_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
               "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT", "LOST"}
SLURM_CMD_TIMEOUT = 30  # seconds for one sbatch/scontrol/sacct call: a hung slurmctld is an error, not a hang


def add_slurm_args(p, no_wait=True):
    """The --slurm options, shared by the scripts that submit arrays."""
    g = p.add_argument_group("Slurm (docs/clusters.md)")
    g.add_argument("--slurm", action="store_true",
                   help="submit one sbatch job array (one task per run, each task's ranks one srun step) "
                        "instead of running here")
    g.add_argument("--sbatch", action="append", default=[], metavar="'OPTIONS'",
                   help="sbatch options for the array, as one string (repeatable), e.g. "
                        "--sbatch='-p debug --time=10'")
    if no_wait:
        g.add_argument("--no-wait", action="store_true",
                       help="submit and return; the same command again waits for the tasks and collects them")
    g.add_argument("--wait-max", type=float, default=0, metavar="S",
                   help="stop waiting for the array after S seconds, leaving it queued or running (0: no limit)")


def check_slurm_args(p, a):
    """Usage errors of the --slurm options; sets a.sbatch_opts (a list)."""
    import shlex
    a.sbatch_opts = []
    for s in a.sbatch:
        try:
            a.sbatch_opts += shlex.split(s)
        except ValueError as e:
            p.error("--sbatch %s: %s" % (s, e))
    if (a.sbatch or getattr(a, "no_wait", False) or a.wait_max) and not a.slurm:
        p.error("--sbatch, --no-wait and --wait-max go with --slurm")
    if a.wait_max < 0:
        p.error("--wait-max %g: expected seconds, at least 0" % a.wait_max)
    for o in a.sbatch_opts:
        if re.match(r"(--array|-a)(=|$)|-a\d", o):
            p.error("--sbatch %s: the array is set by the script (one task per run; --jobs K for at most K at once)"
                    % o)
        if re.match(r"(--parsable|--wait|-W)(=|$)", o):
            p.error("--sbatch %s: set by the script (it polls the tasks itself)" % o)


def slurm_call(cmd, what=None):
    """Run a Slurm command, bounded; its stdout, or ToolError with its last error line."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_CMD_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ToolError("%s not found: --slurm needs Slurm's client commands (Debian: slurm-client)" % cmd[0])
    except subprocess.TimeoutExpired:
        raise ToolError("%s did not answer within %d s (is slurmctld up?)" % (what or cmd[0], SLURM_CMD_TIMEOUT))
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]
        last = re.sub(r"^%s: " % re.escape(cmd[0]), "", last)  # "sbatch: error: ..." once, not twice
        raise ToolError("%s: %s" % (what or " ".join(cmd[:2]), last))
    return out.stdout


def read_slurm_record(folder, signature):
    """A task's slurm.json in folder, when it belongs to this run (same signature)."""
    try:
        with open(os.path.join(folder, "slurm.json"), encoding="utf-8") as f:
            rec = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec if rec.get("signature") == signature else None


def write_slurm_record(folder, rec):
    path = os.path.join(folder, "slurm.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def slurm_task_line(task, cmd, folder, ntasks, mpi):
    """The shell lines of one array task: srun starts the ranks as one step,
    its output goes to folder/log.txt and its exit status to folder/exit_code
    (read when Slurm has forgotten the task)."""
    import shlex
    q = shlex.quote
    folder = os.path.abspath(folder)
    rdzv = os.path.join(folder, "rendezvous")
    srun = ["srun", "--ntasks=%d" % ntasks, "--kill-on-bad-exit=1"]
    threads = ""
    if not any(c.startswith("experiment.threads=") for c in cmd):
        # dmnist-run's default (the node's cores / its ranks there) counts
        # cores the task was not given: one thread per CPU Slurm gave it
        threads = " --set experiment.threads=${SLURM_CPUS_PER_TASK:-1}"
    lines = ["%d)" % task,
             # gloo/nccl on several nodes need a rendezvous all nodes see: the
             # run folder is on the shared file system (results are read there)
             "    rdzv=%s/$SLURM_JOB_ID" % q(rdzv),
             "    mkdir -p \"$rdzv\"",
             "    export DMNIST_RENDEZVOUS=${DMNIST_RENDEZVOUS:-file://$rdzv}",
             "    %s%s %s%s >%s 2>&1" % (" ".join(srun), " --mpi=${SLURM_MPI_TYPE:-pmix}" if mpi else "",
                                       " ".join(q(c) for c in cmd), threads, q(os.path.join(folder, "log.txt"))),
             "    rc=$?",
             "    rm -rf \"$rdzv\"",
             "    echo $rc >%s" % q(os.path.join(folder, "exit_code")),
             "    exit $rc ;;"]
    return "\n".join(lines)


def submit_array(out, tasks, sbatch_opts, ntasks, job_name, max_running=0):
    """Submit one array job. tasks: [(index, shell lines from slurm_task_line)].
    Writes out/slurm/array.sh (the batch script as submitted) and returns the
    array's job id; the task ids are JOBID_INDEX."""
    import shlex
    os.makedirs(os.path.join(out, "slurm"), exist_ok=True)
    script = os.path.join(out, "slurm", "array.sh")
    with open(script, "w", encoding="utf-8") as f:
        f.write("#!/bin/bash\n# Written by %s: one task per run (docs/clusters.md).\ncd %s || exit 2\n"
                "case $SLURM_ARRAY_TASK_ID in\n%s\n*) echo \"no run for array task $SLURM_ARRAY_TASK_ID\" >&2; "
                "exit 2 ;;\nesac\n" % (os.path.basename(sys.argv[0]), shlex.quote(os.getcwd()),
                                       "\n".join(t for _, t in tasks)))
    array = ",".join(str(i) for i, _ in tasks) + ("%%%d" % max_running if max_running else "")
    cmd = ["sbatch", "--parsable", "--job-name=" + job_name, "--array=" + array, "--ntasks=%d" % ntasks,
           "--output=" + os.path.join(os.path.abspath(out), "slurm", "%A_%a.out")] + sbatch_opts + [script]
    answer = slurm_call(cmd, "sbatch").strip()
    m = re.fullmatch(r"(\d+)(;.*)?", answer.splitlines()[-1] if answer else "")
    if not m:
        raise ToolError("sbatch: expected a job id, got %r" % answer)
    return m.group(1)


def expand_task_ids(spec):
    """Array task ids of scontrol's ArrayTaskId: '3', '1,4-6', '0-7:2%2'."""
    ids = []
    for part in spec.split("%")[0].split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if m:
            lo, hi, step = int(m.group(1)), int(m.group(2) or m.group(1)), int(m.group(3) or 1)
            ids += list(range(lo, hi + 1, step))
    return ids


def hms_seconds(text):
    """Seconds of Slurm's [D-]HH:MM:SS (RunTime, Elapsed), or None."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+):(\d+)", text or "")
    if not m:
        return None
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def slurm_states(array_id):
    """{task index: {state, exit_code, seconds}} of one array job from
    scontrol (which knows a job until MinJobAge after its end), else sacct;
    {} when neither knows it any more."""
    states = {}
    try:
        text = slurm_call(["scontrol", "-o", "show", "job", array_id], "scontrol show job %s" % array_id)
    except ToolError as e:
        if "Invalid job id" not in str(e):
            raise
        text = ""
    for line in text.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if f.get("ArrayJobId") != array_id or "ArrayTaskId" not in f:
            continue
        for i in expand_task_ids(f["ArrayTaskId"]):
            states[i] = {"state": f.get("JobState", "UNKNOWN"), "exit_code": f.get("ExitCode", ""),
                         "seconds": hms_seconds(f.get("RunTime"))}
    if states:
        return states
    try:
        text = slurm_call(["sacct", "-n", "-P", "-X", "-j", array_id, "-o", "JobID,State,ExitCode,ElapsedRaw"],
                          "sacct -j %s" % array_id)
    except ToolError:
        return {}  # no accounting here: the caller falls back on the task's exit_code file
    for line in text.splitlines():
        parts = line.split("|")
        m = re.fullmatch(r"\d+_(\d+)", parts[0]) if len(parts) == 4 else None
        if m:
            states[int(m.group(1))] = {"state": parts[1].split()[0], "exit_code": parts[2],
                                       "seconds": float(parts[3]) if parts[3].isdigit() else None}
    return states


def refresh_slurm_records(items):
    """Bring the records of unfinished tasks up to date. items: [(folder,
    record)] with records from read_slurm_record; changed records are written
    back. Returns the folders whose task has just ended."""
    ended = []
    by_array = {}
    for folder, rec in items:
        if rec and rec.get("state") not in SLURM_ENDED:
            by_array.setdefault(rec["job"].split("_")[0], []).append((folder, rec))
    for array_id, members in by_array.items():
        states = slurm_states(array_id)
        for folder, rec in members:
            task = int(rec["job"].split("_")[1])
            st = states.get(task)
            if st is None:  # forgotten by Slurm: the task's own exit_code file, else lost
                try:
                    with open(os.path.join(folder, "exit_code")) as f:
                        code = int(f.read().strip())
                    st = {"state": "COMPLETED" if code == 0 else "FAILED", "exit_code": "%d:0" % code,
                          "seconds": rec.get("seconds")}
                except (FileNotFoundError, ValueError):
                    st = {"state": "LOST", "exit_code": "", "seconds": None}
            if (st["state"], st["exit_code"]) != (rec.get("state"), rec.get("exit_code")) or \
                    st["seconds"] != rec.get("seconds"):
                rec.update(st)
                write_slurm_record(folder, rec)
            if rec["state"] in SLURM_ENDED:
                ended.append(folder)
    return ended


def slurm_exit(rec):
    """A run's exit code from its task record: the batch script's status
    (srun's), or the state name when Slurm ended it (CANCELLED, TIMEOUT...)."""
    if rec["state"] in ("COMPLETED", "FAILED"):
        try:
            return int(rec["exit_code"].split(":")[0])
        except ValueError:
            pass
    return rec["state"].lower()


def wait_slurm(items, on_end, wait_max=0):
    """Poll the tasks of items ([(folder, record)]) until all have ended;
    on_end(folder) for each as it ends. The interval grows from 1 s to 15 s
    (a scheduler is not polled every second for hours). A Slurm that stops
    answering for 120 s, or wait_max seconds (when > 0), ends the wait:
    returns False then, True when every task has ended."""
    t0 = time.monotonic()
    last_ok = t0
    interval = 1.0
    while True:
        try:
            for folder in refresh_slurm_records(items):
                on_end(folder)
            last_ok = time.monotonic()
        except ToolError as e:
            if time.monotonic() - last_ok > 120:
                raise ToolError("%s (for 2 minutes; the tasks may still run: run the same command again "
                                "to collect them)" % e)
        if all(rec["state"] in SLURM_ENDED for _, rec in items):
            return True
        if wait_max and time.monotonic() - t0 >= wait_max:
            return False
        time.sleep(interval if not wait_max else min(interval, max(0.0, t0 + wait_max - time.monotonic())))
        interval = min(15.0, interval * 1.5)


def run_backend(config, sets):
    """The comm backend a run uses: its last --set experiment.backend, else
    the config's [experiment] backend, else "" (dmnist-run's default)."""
    import configparser
    for s in reversed(sets):
        if s.startswith("experiment.backend="):
            return s.split("=", 1)[1].strip()
    cp = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), strict=False, interpolation=None)
    try:
        cp.read(config, encoding="utf-8")
        return cp.get("experiment", "backend", fallback="").strip()
    except configparser.Error:
        return ""  # dmnist-run reports a bad config itself, in the run's log
