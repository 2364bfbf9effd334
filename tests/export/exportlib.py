"""Shared by tests/export/test_*.py: paths from ctest's environment, running
dmnist-export, and MNIST's test split and a .npy file read with the standard
library only (Debian's torch 1.13 cannot use the venv's NumPy 2)."""
import gzip
import os
import struct
import subprocess
import sys

SRC = os.environ["DMNIST_SOURCE_DIR"]
EXPORT = os.environ["DMNIST_EXPORT"]
WORK = os.environ["DMNIST_EXPORT_WORK"]
CKPT = os.path.join(WORK, "ckpt")
CONFIG = os.path.join(SRC, "configs", "cnn.ini")
MNIST = os.path.join(SRC, "data", "mnist")


def skip(why):
    print("skipped: " + why)
    sys.exit(77)


def fail(why):
    print("FAIL: " + why)
    sys.exit(1)


def need(module, package):
    try:
        return __import__(module)
    except Exception as e:  # ImportError, or a broken install
        skip("Python module %s not importable (%s): pip install %s in the venv "
             "(scripts/install-deps.sh --export)" % (module, e, package))


def export(*args, ckpt=CKPT, config=CONFIG):
    """Run dmnist-export CKPT CONFIG ARGS from the source tree."""
    cmd = [EXPORT, ckpt, config] + list(args)
    print("$ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=SRC, capture_output=True, text=True)
    sys.stdout.write(p.stdout + p.stderr)
    if p.returncode != 0:
        fail("dmnist-export exited %d" % p.returncode)
    return p.stdout


def train(config, ckpt_dir):
    """A short dmnist-run of CONFIG, checkpointed into ckpt_dir."""
    cmd = [os.environ["DMNIST_RUN"], config, "--no-progress", "--set", "train.checkpoint_dir=" + ckpt_dir]
    print("$ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=SRC, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stdout.write(p.stdout + p.stderr)
        fail("dmnist-run exited %d" % p.returncode)
    print(p.stdout.strip().splitlines()[-1])


def mnist_test():
    """(pixel bytes of the 10,000 images, 28x28 each; label bytes)."""
    with gzip.open(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")) as f:
        img = f.read()
    with gzip.open(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        lab = f.read()
    n = struct.unpack(">I", img[4:8])[0]
    assert struct.unpack(">I", lab[4:8])[0] == n
    return img[16:], lab[8:], n


def read_npy(path):
    """A float32 C-order 2-D .npy: (raw bytes, rows, cols)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:6] == b"\x93NUMPY", path
    hlen = struct.unpack("<H", data[8:10])[0]
    header = data[10:10 + hlen].decode("latin1")
    assert "'<f4'" in header and "False" in header, header
    shape = header.split("'shape': (")[1].split(")")[0]
    rows, cols = (int(v) for v in shape.split(",")[:2])
    return data[10 + hlen:], rows, cols
