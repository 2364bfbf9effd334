#!/usr/bin/env python3
"""PyTorch reference for dmnist on the CPU: the seed CNN of configs/cnn.ini.

Model: Conv2D 32 3x3 ReLU -> Conv2D 64 3x3 ReLU -> MaxPool 2 -> Dropout 0.25
-> Flatten -> Dense 256 ReLU -> Dropout 0.5 -> Dense 10, softmax
cross-entropy. Glorot-uniform weights and zero biases (Keras's defaults, as
dmnist draws them), Adam (Keras epsilon 1e-7), the given batch. Data as
dmnist reads it: the MNIST bytes stay uint8 in memory and each batch is
converted to float32 (optionally standardised with mean 0.1307, std 0.3081),
drawn by one random permutation per epoch with the ragged tail dropped.
--synthetic uses random images and labels instead (no files needed). The
model, the IDX reader and the accuracy pass are dm_torch_model.py's (shared
with torch_gpu.py).

Two modes; each prints one JSON line:

  speed (default): --warmup-steps untimed steps, then --steps timed steps:
    {"impl": "torch", "batch": 64, "images_per_s": ..., "step_ms": ...,
     "cpu_s_per_step": ..., "peak_rss_mb": ..., "torch": "1.13.0", ...}

  time to accuracy (--target 0.99): trains up to --epochs epochs with an
    evaluation of the 10,000 test images every --eval-every steps and stops
    at the first evaluation that reaches the target:
    {"impl": "torch", "mode": "tta", "reached": true, "time_s": ..., "step": ...,
     "test_accuracy": ..., "evals": [[step, acc, time_s], ...]}
    time_s counts from just after `import torch` (data loading included),
    as dmnist's time_s counts from the start of its training set-up.

  /usr/bin/python3 scripts/bench/torch_cpu.py [--data data/mnist | --synthetic]
      [--batch 64] [--steps 100] [--warmup-steps 10] [--threads 2]
      [--lr 0.001] [--warmup-lr-steps 0] [--lr-decay-rate 1 --lr-decay-steps 0]
      [--standardize] [--model-ini CONFIG.ini] [--schedule exp|linear|cosine]
      [--target 0.99 --epochs 5 --eval-every 200 --eval-batch 1000]

--model-ini builds the model of a dmnist INI file instead of the seed CNN
(dm_torch_model.from_ini); --schedule linear|cosine decays the lr after the
warm-up to 0 at the end of the run (--epochs), as dmnist's
optimizer.schedule (core/schedule.c).
"""
import argparse
import json
import math
import resource
import sys
import time

import dm_torch_model

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--synthetic", action="store_true", help="random MNIST-shaped data")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100, help="timed steps (speed mode)")
    ap.add_argument("--warmup-steps", type=int, default=10, help="untimed steps first (speed mode)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--warmup-lr-steps", type=int, default=0,
                    help="linear lr warm-up over N steps, as dmnist's optimizer.warmup_steps")
    ap.add_argument("--lr-decay-rate", type=float, default=1.0,
                    help="exponential decay, as dmnist adam's lr_decay_rate")
    ap.add_argument("--lr-decay-steps", type=int, default=0,
                    help="lr * rate^((step - 1) / N), as dmnist adam's lr_decay_steps (0 = none)")
    ap.add_argument("--standardize", action="store_true", help="as dmnist's data.standardize")
    ap.add_argument("--model-ini", help="the model of this dmnist INI file (default: the seed CNN)")
    ap.add_argument("--schedule", choices=("exp", "linear", "cosine"), default="exp",
                    help="lr after the warm-up: exp (--lr-decay-*), or linear/cosine to 0 at the end")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--target", type=float, default=0.0, help="time-to-accuracy mode: stop at this test accuracy")
    ap.add_argument("--epochs", type=float, default=5, help="time-to-accuracy mode: at most this many epochs")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-batch", type=int, default=1000)
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.threads < 1 or args.warmup_steps < 0:
        sys.exit("torch_cpu.py: --batch, --steps and --threads must be >= 1, --warmup-steps >= 0")

    import torch
    import torch.nn.functional as F

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed)
        x_train = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=g)
        y_train = torch.randint(0, 10, (60000,), generator=g)
        x_test = torch.randint(0, 256, (10000, 1, 28, 28), dtype=torch.uint8, generator=g)
        y_test = torch.randint(0, 10, (10000,), generator=g)
    else:
        x_train, y_train, x_test, y_test = dm_torch_model.load_mnist(
            args.data, " (scripts/get-mnist.sh, or --synthetic)")

    def to_float(xb):
        x = xb.float().div_(255.0)
        if args.standardize:
            x.sub_(MNIST_MEAN).div_(MNIST_STD)
        return x

    model = (dm_torch_model.from_ini(args.model_ini) if args.model_ini
             else dm_torch_model.seed_cnn(keras_init=True))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, eps=1e-7)
    n = x_train.shape[0]
    per_epoch = n // args.batch
    state = {"step": 0, "perm": None, "pos": per_epoch}

    def step():
        if state["pos"] >= per_epoch:  # a new permutation per epoch, ragged tail dropped
            state["perm"] = torch.randperm(n)
            state["pos"] = 0
        idx = state["perm"][state["pos"] * args.batch:(state["pos"] + 1) * args.batch]
        state["pos"] += 1
        state["step"] += 1
        if args.schedule != "exp":  # core/schedule.c, 0-based step s of T
            s_, W, T = state["step"] - 1, args.warmup_lr_steps, int(args.epochs * per_epoch)
            if W > 0 and s_ < W:
                w = (s_ + 1) / W
            else:
                p = min(1.0, max(0.0, (s_ - W) / max(1, T - W)))
                w = 1.0 - p if args.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
            for group in opt.param_groups:
                group["lr"] = args.lr * w
        elif args.warmup_lr_steps > 0 or args.lr_decay_steps > 0:
            w = min(1.0, state["step"] / args.warmup_lr_steps) if args.warmup_lr_steps > 0 else 1.0
            if args.lr_decay_steps > 0:
                w *= args.lr_decay_rate ** ((state["step"] - 1) / args.lr_decay_steps)
            for group in opt.param_groups:
                group["lr"] = args.lr * w
        xb, yb = to_float(x_train[idx]), y_train[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()

    def accuracy():
        return dm_torch_model.accuracy(model, x_test, y_test, args.eval_batch, to_float)

    rec = {"impl": "torch", "torch": torch.__version__, "torch_file": torch.__file__,
           "python": sys.executable, "threads": torch.get_num_threads(), "batch": args.batch,
           "data": "synthetic" if args.synthetic else "mnist"}
    if args.target > 0:
        total = int(args.epochs * per_epoch)
        evals, reached = [], None
        while state["step"] < total:
            step()
            if state["step"] % args.eval_every == 0 or state["step"] == total:
                acc = accuracy()
                evals.append([state["step"], round(acc, 4), round(time.perf_counter() - t_start, 3)])
                print(f"eval at step {state['step']}: test accuracy {acc:.4f}  time {evals[-1][2]:.1f} s",
                      file=sys.stderr, flush=True)
                if acc >= args.target:
                    reached = evals[-1]
                    break
        rec.update({"mode": "tta", "target": args.target, "reached": reached is not None,
                    "time_s": reached[2] if reached else None, "step": reached[0] if reached else None,
                    "test_accuracy": reached[1] if reached else evals[-1][1], "evals": evals,
                    "peak_rss_mb": round(peak_rss_mb(), 1)})
    else:
        for _ in range(args.warmup_steps):
            step()
        c0, t0 = cpu_s(), time.perf_counter()
        for _ in range(args.steps):
            step()
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        rec.update({"mode": "speed", "steps": args.steps, "images_per_s": round(args.steps * args.batch / wall, 1),
                    "step_ms": round(1e3 * wall / args.steps, 2),
                    "cpu_s_per_step": round(cpu / args.steps, 4), "peak_rss_mb": round(peak_rss_mb(), 1)})
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
