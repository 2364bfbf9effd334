"""What the PyTorch references (torch_cpu.py, torch_gpu.py) share: the seed
CNN of configs/cnn.ini, MNIST read from its IDX files, and test accuracy.

torch is imported inside the functions, so that the scripts can parse their
command line (and answer --help) without it, and time from their own import.
"""
import gzip
import os
import sys


def load_idx(path):
    """An IDX file (plain or .gz) as a numpy uint8 array of its shape."""
    import numpy as np
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = int.from_bytes(data[0:4], "big") & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, stem, hint=""):
    """data_dir/stem or data_dir/stem.gz; else exit naming the calling script."""
    for name in (stem, stem + ".gz"):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    sys.exit(f"{os.path.basename(sys.argv[0])}: {stem}[.gz] not found in {data_dir}{hint}")


def load_mnist(data_dir, hint=""):
    """(x_train, y_train, x_test, y_test) as CPU tensors: images uint8
    [N, 1, 28, 28] as in the files, labels int64."""
    import torch

    def images(stem):
        return torch.from_numpy(load_idx(find(data_dir, stem, hint)).copy()).unsqueeze(1)

    def labels(stem):
        return torch.from_numpy(load_idx(find(data_dir, stem, hint)).astype("int64"))

    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


def seed_cnn(keras_init=True):
    """Conv2D 32 3x3 ReLU -> Conv2D 64 3x3 ReLU -> MaxPool 2 -> Dropout 0.25
    -> Flatten -> Dense 256 ReLU -> Dropout 0.5 -> Dense 10 (logits).
    keras_init: Glorot-uniform weights and zero biases (Keras's defaults, as
    dmnist draws them); else PyTorch's own initialisation."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.drop1 = nn.Dropout(0.25)
            self.fc1 = nn.Linear(9216, 256)
            self.drop2 = nn.Dropout(0.5)
            self.fc2 = nn.Linear(256, 10)
            if keras_init:
                for m in (self.conv1, self.conv2, self.fc1, self.fc2):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = self.drop1(F.max_pool2d(x, 2))
            x = torch.flatten(x, 1)
            x = self.drop2(F.relu(self.fc1(x)))
            return self.fc2(x)

    return Net()


def accuracy(model, x_test, y_test, batch, prep=lambda x: x):
    """Fraction of x_test classified as y_test, in batches (prep turns a
    slice of x_test into the model's input); leaves the model training."""
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x_test.shape[0], batch):
            out = model(prep(x_test[i:i + batch]))
            correct += (out.argmax(1) == y_test[i:i + batch]).sum().item()
    model.train()
    return correct / x_test.shape[0]


def from_ini(path, keras_init=True):
    """The model of a dmnist INI file's [layer.*] sections, in file order, as
    a torch nn.Sequential (for the time-to-accuracy comparison, tta.sh):
    conv2d (filters, kernel, stride, padding valid|same, bias, activation),
    maxpool2d (pool, stride), dropout (rate), flatten, relu, dense (units,
    bias, activation); softmax_cross_entropy ends the model (the logits are
    its input). Keras's Glorot-uniform weights and zero biases, as dmnist
    draws them. Raises ValueError for a layer type it does not know."""
    import configparser
    import torch.nn as nn

    c = configparser.ConfigParser(inline_comment_prefixes=(";",))
    c.read(path)
    mods, ch, hw, flat = [], 1, 28, None
    for sec in c.sections():
        if not sec.startswith("layer."):
            continue
        s = c[sec]
        t = s.get("type")
        relu = s.get("activation", "none") == "relu"
        bias = s.get("bias", "true").lower() in ("1", "true", "yes", "on")
        if t == "conv2d":
            k, st = int(s.get("kernel", "3")), int(s.get("stride", "1"))
            f = int(s["filters"])
            if s.get("padding", "valid") == "same":
                if st != 1 or k % 2 == 0:
                    raise ValueError(f"{sec}: padding=same is mirrored for odd kernels at stride 1 only")
                pad, hw = k // 2, hw
            else:
                pad, hw = 0, (hw - k) // st + 1
            m = nn.Conv2d(ch, f, k, stride=st, padding=pad, bias=bias)
            mods.append(m)
            ch = f
        elif t == "maxpool2d":
            p = int(s.get("pool", "2"))
            st = int(s.get("stride", "0")) or p
            mods.append(nn.MaxPool2d(p, st))
            hw = (hw - p) // st + 1
        elif t == "dropout":
            mods.append(nn.Dropout(float(s["rate"])))
        elif t == "flatten":
            mods.append(nn.Flatten())
            flat = ch * hw * hw
        elif t == "relu":
            mods.append(nn.ReLU())
        elif t == "dense":
            n_in = flat if flat is not None else ch * hw * hw
            m = nn.Linear(n_in, int(s["units"]), bias=bias)
            mods.append(m)
            flat = int(s["units"])
        elif t == "softmax_cross_entropy":
            continue
        else:
            raise ValueError(f"{sec}: layer type {t} has no PyTorch mirror here")
        if relu:
            mods.append(nn.ReLU())
    net = nn.Sequential(*mods)
    if keras_init:
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return net
