#!/usr/bin/env python3
"""dmnist-run --tensorboard DIR, read back.

1. A one-rank run of tests/tools/tiny.ini: every record of its event file is
   framed as TFRecord (length, masked CRC32C of the length, data, masked
   CRC32C of the data), checked here with the standard library.
2. TensorBoard's own reader (EventAccumulator, from the tensorboard package
   in the repository's .venv) finds the scalars train/loss, train/accuracy,
   train/learning_rate, train/images_per_s, train/comm_wait_percent at every
   logged step and test/loss, test/accuracy at every evaluation, with the
   values of --metrics, and the "settings" text with the --set values.
3. With gloo: two ranks write one event file (rank 0's).
4. scripts/sweep --tensorboard: one run folder per grid point, named by its
   settings, each read back by EventAccumulator.
Without the tensorboard package, 1 runs and the rest is skipped visibly.
"""

import atexit
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

SRC = os.environ["DMNIST_SOURCE_DIR"]
RUN = os.environ["DMNIST_RUN"]
TINY = os.path.join(SRC, "tests", "tools", "tiny.ini")
VENV_PY = os.path.join(SRC, ".venv", "bin", "python")


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    """The data of every TFRecord in path, each CRC checked."""
    with open(path, "rb") as f:
        raw = f.read()
    out, pos = [], 0
    while pos < len(raw):
        if len(raw) - pos < 12:
            fail("%s: %d stray bytes at offset %d" % (path, len(raw) - pos, pos))
        head = raw[pos:pos + 8]
        (n,) = struct.unpack("<Q", head)
        (hc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
        if hc != masked(head):
            fail("%s: record at %d: length CRC %08x, expected %08x" % (path, pos, hc, masked(head)))
        data = raw[pos + 12:pos + 12 + n]
        if len(data) != n or len(raw) < pos + 16 + n:
            fail("%s: record at %d is cut short" % (path, pos))
        (dc,) = struct.unpack("<I", raw[pos + 12 + n:pos + 16 + n])
        if dc != masked(data):
            fail("%s: record at %d: data CRC %08x, expected %08x" % (path, pos, dc, masked(data)))
        out.append(data)
        pos += 16 + n
    return out


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)
    if p.returncode != 0:
        fail("%s exited %d:\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p.stdout


def has_gloo():
    out = subprocess.run([RUN, "--list-plugins"], capture_output=True, text=True).stdout
    return any(line.split()[:2] == ["comm", "gloo"] for line in out.splitlines())


# The reader, run by the .venv's Python: prints what EventAccumulator saw as JSON.
READER = r"""
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
out = {}
for d in sys.argv[1:]:
    ea = EventAccumulator(d, size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    out[d] = {"scalars": {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]},
              "tensors": {t: [[e.step, [s.decode() for s in e.tensor_proto.string_val]] for e in ea.Tensors(t)]
                          for t in tags["tensors"]},
              "plugins": {t: ea.SummaryMetadata(t).plugin_data.plugin_name for t in tags["tensors"]}}
print(json.dumps(out))
"""


def have_tensorboard():
    if not os.path.exists(VENV_PY):
        return False
    return subprocess.run([VENV_PY, "-c", "import tensorboard"], capture_output=True).returncode == 0


def read_back(dirs):
    p = subprocess.run([VENV_PY, "-c", READER] + dirs, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        fail("EventAccumulator failed:\n" + p.stderr)
    return json.loads(p.stdout)


tmp = tempfile.mkdtemp(prefix="dmnist-tb.")
atexit.register(shutil.rmtree, tmp, True)
os.chdir(tmp)
metrics = os.path.join(tmp, "m.jsonl")
run([RUN, "--no-progress", "--tensorboard", "tb/one", "--metrics", metrics, "--set", "experiment.backend=local",
     "--set", "train.eval_every=8", "--set", "optimizer.lr=0.04", TINY])
files = glob.glob("tb/one/*tfevents*")
if len(files) != 1:
    fail("tb/one holds %s, expected one event file" % files)
recs = records(files[0])
if b"brain.Event:2" not in recs[0]:
    fail("the first record is not the file_version event")
print("ok: %s: %d TFRecords, lengths and masked CRC32C right" % (os.path.basename(files[0]), len(recs)))

if not have_tensorboard():
    print("skipped: TensorBoard's reader: no tensorboard package in %s (scripts/install-deps.sh --tests)" % VENV_PY)
    sys.exit(77)

seen = read_back(["tb/one"])["tb/one"]
m = [json.loads(line) for line in open(metrics)]
steps = [e for e in m if e["event"] == "step"]
evals = [e for e in m if e["event"] == "eval"]
final = [e for e in m if e["event"] == "final"][0]
want = {"train/loss": "loss", "train/accuracy": "accuracy", "train/learning_rate": "lr",
        "train/images_per_s": "images_per_s"}
for tag, key in want.items():
    got = seen["scalars"].get(tag)
    if not got:
        fail("no scalar %s; tags: %s" % (tag, sorted(seen["scalars"])))
    if [s for s, _ in got] != [e["step"] for e in steps]:
        fail("%s at steps %s, the log at %s" % (tag, [s for s, _ in got], [e["step"] for e in steps]))
    for (s, v), e in zip(got, steps):
        if abs(v - e[key]) > 1e-5 * max(1.0, abs(e[key])):
            fail("%s at step %d: %g, --metrics says %g" % (tag, s, v, e[key]))
if len(seen["scalars"].get("train/comm_wait_percent", [])) != len(steps):
    fail("train/comm_wait_percent missing at some log steps")
test_acc = seen["scalars"].get("test/accuracy", [])
want_acc = [(e["step"], e["test_accuracy"]) for e in evals] + [(final["steps"], final["test_accuracy"])]
if [s for s, _ in test_acc] != [s for s, _ in want_acc] or \
        any(abs(a - b) > 1e-6 for (_, a), (_, b) in zip(test_acc, want_acc)):
    fail("test/accuracy %s, --metrics %s" % (test_acc, want_acc))
if len(seen["scalars"].get("test/loss", [])) != len(want_acc):
    fail("test/loss at %s" % seen["scalars"].get("test/loss"))
text = seen["tensors"].get("settings")
if not text or "| optimizer.lr | 0.04 |" not in text[0][1][0] or seen["plugins"]["settings"] != "text":
    fail("the settings text is %s" % text)
print("ok: EventAccumulator reads %d scalar tags (%d log steps, %d evaluations) equal to --metrics, and the "
      "settings text" % (len(seen["scalars"]), len(steps), len(want_acc)))

if has_gloo():
    run([RUN, "--no-progress", "--np", "2", "--tensorboard", "tb/two", TINY])
    files = glob.glob("tb/two/*tfevents*")
    if len(files) != 1:
        fail("two ranks wrote %s, expected rank 0's file only" % files)
    seen = read_back(["tb/two"])["tb/two"]
    if "2 ranks (gloo)" not in seen["tensors"]["settings"][0][1][0] or not seen["scalars"].get("train/loss"):
        fail("the two-rank run's events: %s" % seen)
    print("ok: 2 ranks (gloo) write one event file, rank 0's")
else:
    print("skipped: 2 ranks (no gloo plugin in this build)")

sweep = os.path.join(SRC, "scripts", "sweep")
run([sys.executable, sweep, TINY, "optimizer.lr=0.01,0.05", "--tensorboard", "--no-plots", "--out", "sw",
     "--dmnist-run", RUN, "--set", "experiment.backend=local"])
runs = sorted(os.listdir("sw/tensorboard"))
if runs != ["np1_optimizer.lr=0.01", "np1_optimizer.lr=0.05"]:
    fail("sweep runs in sw/tensorboard: %s" % runs)
seen = read_back(["sw/tensorboard/" + r for r in runs])
for r in runs:
    s = seen["sw/tensorboard/" + r]
    lr = r.split("=")[1]
    if "| optimizer.lr | %s |" % lr not in s["tensors"]["settings"][0][1][0]:
        fail("run %s: settings %s" % (r, s["tensors"]["settings"]))
    if not s["scalars"].get("test/accuracy"):
        fail("run %s: no test/accuracy" % r)
loss = [seen["sw/tensorboard/" + r]["scalars"]["train/loss"][-1][1] for r in runs]
if loss[0] == loss[1]:
    fail("both sweep runs logged the same loss: the grid values did not reach them")
print("ok: scripts/sweep --tensorboard: one run folder per grid point (%s), each with its settings" % ", ".join(runs))
