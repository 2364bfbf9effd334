#!/usr/bin/env python3
"""Progress output: on a terminal (a pseudo-terminal from script(1)) rank 0
redraws a bar with images/s and an ETA that ends at 100%; with output to a
pipe it prints plain log lines only; --progress and --no-progress force it."""

import shlex
import shutil

from toolstest import DMNIST_RUN, TINY, check, run, skip

BAR = "\r\x1b[K["
base = [DMNIST_RUN, "--set", "experiment.backend=local", "--set", "train.total_batches=12"]


def on_tty(args):
    """Run under a pseudo-terminal; returns what the terminal got."""
    cmd = " ".join(shlex.quote(a) for a in base + args + [TINY])
    out, _ = run(["script", "-qec", cmd, "/dev/null"], timeout=120)
    return out


if not shutil.which("script"):
    skip("script(1) is not installed (Debian package bsdutils)")

tty = on_tty([])
check(BAR in tty, "no progress bar on a terminal:\n%r" % tty[-2000:])
last = tty.rsplit(BAR, 1)[1].splitlines()[0]
check("100%" in last and "step 12/12" in last, "the last bar is not complete: %r" % last)
check("images/s" in last and "ETA 0:00:00" in last, "the last bar lacks images/s or ETA: %r" % last)
check("test accuracy" in tty, "the final line is missing on a terminal")
# log lines still appear, each on a line of its own (the bar is erased first)
check(any(l.lstrip("\r").startswith("\x1b[Kstep ") or l.startswith("step ") for l in tty.splitlines()),
      "no step log lines on a terminal:\n%r" % tty[-2000:])

piped, _ = run(base + [TINY])
check("\x1b[K" not in piped and "\r" not in piped, "control characters in piped output:\n%r" % piped[-500:])
check("step     12/12" in piped, "no plain step lines when piped:\n" + piped)

forced, _ = run(base + ["--progress", TINY])
check(BAR in forced, "--progress drew no bar into a pipe")
off = on_tty(["--no-progress"])
check(BAR not in off, "--no-progress still drew a bar on a terminal")
# Under an MPI launcher every rank gets a pseudo-terminal although the job's
# output usually goes to a log file: no bar there unless --progress asks.
for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
    cmd = " ".join(shlex.quote(a) for a in base + [TINY])
    launched, _ = run(["script", "-qec", "env %s=0 %s" % (var, cmd), "/dev/null"], timeout=120)
    check(BAR not in launched and "\x1b[K" not in launched,
          "a bar under a launcher (%s set) on its pseudo-terminal:\n%r" % (var, launched[-500:]))
    check("step     12/12" in launched, "no plain step lines under a launcher (%s):\n%s" % (var, launched))
print("ok: bar on a terminal, plain lines in a pipe and under mpirun/PMI, both flags obeyed")
