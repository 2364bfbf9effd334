#!/usr/bin/env python3
"""PyTorch reference for dmnist on one GPU: the seed CNN of configs/cnn-gpu.ini
(conv 32 -> conv 64 -> maxpool 2 -> dropout 0.25 -> dense 256 -> dropout 0.5
-> dense 10, ReLU after conv and dense 256), Adam (Keras epsilon 1e-7), the
whole of MNIST on the GPU, batches drawn by a random permutation per epoch,
the ragged last batch dropped, as dmnist does. The model (here with
PyTorch's own initialisation), the IDX reader and the accuracy pass are
dm_torch_model.py's (shared with torch_cpu.py).

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
import json
import sys
import time

import dm_torch_model


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
    import torch.nn.functional as F

    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device", flush=True)
        sys.exit(77)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)

    # The whole of MNIST on the device, as float32 in [0, 1].
    x_train, y_train, x_test, y_test = dm_torch_model.load_mnist(args.data)
    x_train, x_test = (x.to(dev).float().div_(255.0) for x in (x_train, x_test))
    y_train, y_test = y_train.to(dev), y_test.to(dev)

    out = open(args.json, "a") if args.json else None
    for mode in args.mode:
        for batch in args.batch:
            torch.manual_seed(args.seed)
            model = dm_torch_model.seed_cnn(keras_init=False).to(dev)  # PyTorch's init
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
                "test_accuracy": round(dm_torch_model.accuracy(model, x_test, y_test, 1000), 4),
                "warmup_s": round(warm, 2),
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
