#!/usr/bin/env python3
"""PyTorch reference for dmnist on one GPU: the seed CNN of configs/cnn-gpu.ini
(conv 32 -> conv 64 -> maxpool 2 -> dropout 0.25 -> dense 256 -> dropout 0.5
-> dense 10, ReLU after conv and dense 256), Adam (Keras epsilon 1e-7), the
whole of MNIST on the GPU, batches drawn by a random permutation per epoch,
the ragged last batch dropped, as dmnist does.

For each mode (eager, torch.compile) and batch size it trains one full epoch
after a short warm-up (which also pays for compilation) and prints one JSON
line per run:
  {"impl": "torch", "mode": "eager", "batch": 64, "images_per_s": ..., "epoch_s": ...,
   "test_accuracy": ..., "warmup_s": ...}

  python3 scripts/bench/torch_gpu.py --data data/mnist [--batch 64 512]
      [--mode eager compile] [--lr 0.001] [--warmup-steps 20] [--json FILE]

PyTorch's defaults are kept (cuDNN may use TF32 for convolutions, matmuls
stay FP32); the line records them. Needs a GPU: exits 77 without one.
"""
import argparse
import gzip
import json
import os
import sys
import time


def load_idx(path):
    import numpy as np
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, stem):
    for name in (stem, stem + ".gz"):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    sys.exit(f"torch_gpu.py: {stem}[.gz] not found in {data_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--mode", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", help="also append the JSON lines to this file")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0 = one full epoch)")
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device", flush=True)
        sys.exit(77)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)

    def tensor_images(stem):
        x = load_idx(find(args.data, stem))
        return torch.from_numpy(x.copy()).to(dev).float().div_(255.0).unsqueeze(1)

    def tensor_labels(stem):
        return torch.from_numpy(load_idx(find(args.data, stem)).astype("int64")).to(dev)

    x_train, y_train = tensor_images("train-images-idx3-ubyte"), tensor_labels("train-labels-idx1-ubyte")
    x_test, y_test = tensor_images("t10k-images-idx3-ubyte"), tensor_labels("t10k-labels-idx1-ubyte")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.drop1 = nn.Dropout(0.25)
            self.fc1 = nn.Linear(9216, 256)
            self.drop2 = nn.Dropout(0.5)
            self.fc2 = nn.Linear(256, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = self.drop1(F.max_pool2d(x, 2))
            x = torch.flatten(x, 1)
            x = self.drop2(F.relu(self.fc1(x)))
            return self.fc2(x)

    def accuracy(model):
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, x_test.shape[0], 1000):
                correct += (model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum().item()
        model.train()
        return correct / x_test.shape[0]

    out = open(args.json, "a") if args.json else None
    for mode in args.mode:
        for batch in args.batch:
            torch.manual_seed(args.seed)
            model = Net().to(dev)
            opt = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
            fwd = torch.compile(model) if mode == "compile" else model

            def step(xb, yb):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(fwd(xb), yb)
                loss.backward()
                opt.step()

            n = x_train.shape[0]
            steps = n // batch if args.steps <= 0 else min(args.steps, n // batch)
            t0 = time.perf_counter()
            perm = torch.randperm(n, device=dev)
            for s in range(args.warmup_steps):  # compilation happens here
                idx = perm[(s % steps) * batch:(s % steps + 1) * batch]
                step(x_train[idx], y_train[idx])
            sync()
            warm = time.perf_counter() - t0

            perm = torch.randperm(n, device=dev)
            sync()
            t0 = time.perf_counter()
            for s in range(steps):
                idx = perm[s * batch:(s + 1) * batch]
                step(x_train[idx], y_train[idx])
            sync()
            epoch_s = time.perf_counter() - t0
            rec = {
                "impl": "torch", "mode": mode, "batch": batch, "steps": steps,
                "images_per_s": round(steps * batch / epoch_s, 1), "epoch_s": round(epoch_s, 4),
                "test_accuracy": round(accuracy(model), 4), "warmup_s": round(warm, 2),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            }
            line = json.dumps(rec)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
    if out:
        out.close()


if __name__ == "__main__":
    main()
