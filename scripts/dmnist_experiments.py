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
