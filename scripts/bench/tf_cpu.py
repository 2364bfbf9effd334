#!/usr/bin/env python3
"""TensorFlow reference for dmnist on the CPU: the seed CNN of configs/cnn.ini
(the original TensorFlow + Horovod model), speed mode only, printing the
same JSON line as torch_cpu.py.

Model (Keras, channels-last as TensorFlow's CPU kernels want it): Conv2D 32
3x3 ReLU -> Conv2D 64 3x3 ReLU -> MaxPool 2 -> Dropout 0.25 -> Flatten ->
Dense 256 ReLU -> Dropout 0.5 -> Dense 10, softmax cross-entropy from logits;
Keras's Glorot-uniform weights and zero biases, Adam (lr 0.001, epsilon
1e-7). One compiled step (tf.function) per batch. Data as dmnist reads it:
the MNIST bytes stay uint8 and each batch is gathered by one random
permutation per epoch and converted to float32 inside the step.

Run it with the Python of a venv that has tensorflow-cpu (scripts/bench/cpu.sh
uses /work/tf-venv or $TF_PYTHON); set TF_ENABLE_ONEDNN_OPTS=1 (on AVX2-only
CPUs TensorFlow leaves oneDNN off otherwise).

  /work/tf-venv/bin/python scripts/bench/tf_cpu.py [--data data/mnist | --synthetic]
      [--batch 64] [--steps 100] [--warmup-steps 10] [--threads 2]
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dm_torch_model  # noqa: E402  (its IDX reader only: numpy, no torch)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(a.seed)
    if a.synthetic:
        rng = np.random.default_rng(a.seed)
        x_train = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
        y_train = rng.integers(0, 10, 60000).astype(np.int32)
    else:
        f = lambda stem: dm_torch_model.find(a.data, stem, " (scripts/get-mnist.sh, or --synthetic)")
        x_train = dm_torch_model.load_idx(f("train-images-idx3-ubyte"))
        y_train = dm_torch_model.load_idx(f("train-labels-idx1-ubyte")).astype(np.int32)
    x_train = tf.constant(x_train[..., None])  # (N, 28, 28, 1) uint8
    y_train = tf.constant(y_train)

    L = tf.keras.layers
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, activation="relu"), L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
        L.Dropout(0.25), L.Flatten(), L.Dense(256, activation="relu"), L.Dropout(0.5), L.Dense(10)])
    opt = tf.keras.optimizers.Adam(learning_rate=0.001, epsilon=1e-7)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(idx):
        xb = tf.cast(tf.gather(x_train, idx), tf.float32) / 255.0
        yb = tf.gather(y_train, idx)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    n = int(x_train.shape[0])
    per_epoch = n // a.batch
    rng = np.random.default_rng(a.seed)
    state = {"perm": None, "pos": per_epoch}

    def step():
        if state["pos"] >= per_epoch:
            state["perm"] = rng.permutation(n).astype(np.int32)
            state["pos"] = 0
        idx = state["perm"][state["pos"] * a.batch:(state["pos"] + 1) * a.batch]
        state["pos"] += 1
        return train_step(tf.constant(idx))

    for _ in range(a.warmup_steps):
        step()
    step().numpy()  # the graph is traced and every kernel has run once
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss.numpy()  # wait for the last step
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(json.dumps({"impl": "tensorflow", "tensorflow": tf.__version__, "python": sys.executable,
                      "threads": a.threads, "batch": a.batch, "mode": "speed", "steps": a.steps,
                      "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
                      "images_per_s": round(a.steps * a.batch / wall, 1),
                      "step_ms": round(1e3 * wall / a.steps, 2), "cpu_s_per_step": round(cpu / a.steps, 4),
                      "peak_rss_mb": round(r1.ru_maxrss / 1024.0, 1)}), flush=True)


if __name__ == "__main__":
    main()
