"""Shared bits of the tools' tests: paths from ctest's environment, running
a command with a time limit, failing with one clear line."""

import atexit
import csv
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE_DIR = os.environ.get("DMNIST_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("DMNIST_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
PLUGIN_DIR = os.environ.get("DMNIST_PLUGIN_PATH") or os.path.join(BUILD_DIR, "plugins")
TINY = os.path.join(SOURCE_DIR, "tests", "tools", "tiny.ini")
DMNIST_RUN = os.path.join(BUILD_DIR, "dmnist-run")
BENCH = os.path.join(BUILD_DIR, "dmnist-bench-comm")
SWEEP = os.path.join(SOURCE_DIR, "scripts", "sweep")
COMPARE = os.path.join(SOURCE_DIR, "scripts", "compare-backends")
SEEDS = os.path.join(SOURCE_DIR, "scripts", "seeds")
SKIP = 77  # ctest SKIP_RETURN_CODE


_tmpdirs = []
_failed = False


def fail(msg):
    global _failed
    _failed = True
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def skip(msg):
    print("SKIP: " + msg, flush=True)
    sys.exit(SKIP)


def have_plugin(name):
    return os.path.exists(os.path.join(PLUGIN_DIR, "dm_%s.so" % name))


def have_mpi():
    return have_plugin("mpi") and shutil.which("mpirun") is not None


def need_gloo():
    if not have_plugin("gloo"):
        skip("the gloo plugin was not built (no libgloo-dev)")


def need_gnuplot():
    if not shutil.which("gnuplot"):
        fail("gnuplot is not installed (Debian: apt-get install gnuplot-nox); the tools draw their PNGs with it")


def run(cmd, timeout=120, expect=0, env=None, cwd=None):
    """Run cmd; return (stdout, stderr) as text, carriage returns kept.
    Fails unless the exit code is expect."""
    e = dict(os.environ)
    e["DMNIST_BUILD_DIR"] = BUILD_DIR
    if env:
        e.update(env)
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=e, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        fail("timed out after %d s: %s" % (timeout, " ".join(cmd)))
    out, err = (b.decode("utf-8", "replace") for b in (p.stdout, p.stderr))
    if expect is not None and p.returncode != expect:
        fail("exit %d (expected %d): %s\n--- stdout\n%s\n--- stderr\n%s" % (p.returncode, expect, " ".join(cmd),
                                                                           out[-3000:], err[-3000:]))
    return out, err


def read_csv(path):
    check(os.path.isfile(path), "%s was not written" % path)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_png(path):
    check(os.path.isfile(path), "%s was not written" % path)
    with open(path, "rb") as f:
        head = f.read(8)
    check(head == b"\x89PNG\r\n\x1a\n", "%s is not a PNG file" % path)
    check(os.path.getsize(path) > 2000, "%s is suspiciously small (%d bytes)" % (path, os.path.getsize(path)))


def tmpdir(name):
    """A fresh folder, deleted at exit unless the test failed (then kept for a look)."""
    path = tempfile.mkdtemp(prefix="dmnist-%s-" % name)
    _tmpdirs.append(path)
    return path


@atexit.register
def _cleanup():
    for path in _tmpdirs:
        if _failed:
            print("kept %s" % path, flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def flat_buffer_floats(config, *sets):
    """The trainer's gradient buffer size, from dmnist-run --dry-run."""
    cmd = [DMNIST_RUN, "--dry-run"]
    for s in sets:
        cmd += ["--set", s]
    out, _ = run(cmd + [config])
    for line in out.splitlines():
        if "flat buffer" in line:
            return int(line.split("flat buffer")[1].split()[0])
    fail("dmnist-run --dry-run printed no 'flat buffer N floats' line")
