#!/usr/bin/env python3
"""optimizer_reference.py RULE OUT [--cases N] [--seed S]

Write a dmnist-plugin-check --reference file for RULE (sgd, adam, rmsprop):
case 1 takes every key's default, the others draw each key at random within
the range the plugin's table allows (and the rule accepts), with their own
random start parameters, gradients, learning rate and number of steps. The
expected parameters are computed here, in double precision, from the update
rules as the plugins' documentation writes them (PyTorch's SGD, Keras's
Adam, PyTorch's RMSprop): independently of the C code under test.

Settings, learning rates, parameters and gradients are rounded to float32
before use, as the plugin sees them."""
import argparse
import math
import random
import struct


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def sgd_settings(rng, default):
    if default:
        return {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    mu = 0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.99)
    return {"momentum": mu, "nesterov": mu > 0 and rng.random() < 0.5,
            "weight_decay": 0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.1)}


def sgd_run(s, lr, p, grads):
    mu, wd = f32(s["momentum"]), f32(s["weight_decay"])
    b = [0.0] * len(p)
    for g in grads:
        for i in range(len(p)):
            d = g[i] + wd * p[i]
            if mu > 0:
                b[i] = mu * b[i] + d
                d = d + mu * b[i] if s["nesterov"] else b[i]
            p[i] -= lr * d
    return p


def adam_settings(rng, default):
    if default:
        return {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7, "weight_decay": 0.0,
                "lr_decay_rate": 1.0, "lr_decay_steps": 0}
    return {"beta1": rng.uniform(0.0, 0.99), "beta2": rng.uniform(0.5, 0.9999),
            "epsilon": 10 ** rng.uniform(-8, -3),
            "weight_decay": 0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.1),
            "lr_decay_rate": rng.uniform(0.5, 1.0), "lr_decay_steps": rng.randint(0, 5)}


def adam_run(s, lr, p, grads):
    b1, b2, eps, wd = (f32(s[k]) for k in ("beta1", "beta2", "epsilon", "weight_decay"))
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(grads, 1):
        lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        if s["lr_decay_steps"] > 0:
            lr_t *= s["lr_decay_rate"] ** ((t - 1) / s["lr_decay_steps"])
        for i in range(len(p)):
            d = g[i] + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            p[i] -= lr_t * m[i] / (math.sqrt(v[i]) + eps)
    return p


def rmsprop_settings(rng, default):
    if default:
        return {"rho": 0.9, "epsilon": 1e-8}
    return {"rho": rng.uniform(0.0, 0.999), "epsilon": 10 ** rng.uniform(-8, -3)}


def rmsprop_run(s, lr, p, grads):
    rho, eps = f32(s["rho"]), f32(s["epsilon"])
    v = [0.0] * len(p)
    for g in grads:
        for i in range(len(p)):
            v[i] = rho * v[i] + (1 - rho) * g[i] * g[i]
            p[i] -= lr * g[i] / (math.sqrt(v[i]) + eps)
    return p


RULES = {"sgd": (sgd_settings, sgd_run), "adam": (adam_settings, adam_run),
         "rmsprop": (rmsprop_settings, rmsprop_run)}


def text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return "%.9g" % v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rule", choices=sorted(RULES))
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    draw, run = RULES[a.rule]
    rng = random.Random(a.seed)
    lines = ["# %s: %d cases, seed %d, from tests/sdk/optimizer_reference.py" % (a.rule, a.cases, a.seed)]
    for k in range(a.cases):
        s = draw(rng, k == 0)
        # the settings as text, then as the plugin reads them back
        s = {key: (val if isinstance(val, (bool, int)) else float(text(val))) for key, val in s.items()}
        n, steps = rng.randint(1, 40), rng.randint(1, 6)
        lr = f32(float(text(rng.uniform(0.001, 0.1))))
        p0 = [f32(rng.uniform(-2, 2)) for _ in range(n)]
        grads = [[f32(rng.gauss(0, 1)) for _ in range(n)] for _ in range(steps)]
        p = run(s, lr, list(p0), grads)
        lines.append("")
        lines.append("case %s-%d" % (a.rule, k + 1))
        lines.append("settings " + " ".join("%s=%s" % (key, text(val)) for key, val in s.items()))
        lines.append("lr " + text(lr))
        lines.append("params " + " ".join(text(x) for x in p0))
        lines += ["grad " + " ".join(text(x) for x in g) for g in grads]
        lines.append("expect " + " ".join(text(x) for x in p))
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
