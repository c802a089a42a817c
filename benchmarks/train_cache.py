"""gf.train's compiled-step cache: a first run (traces and compiles), a later run with a new
optimizer object built alike (`optax.sgd(...)` again), and one with the same object.

    python benchmarks/train_cache.py          # ~1 minute on 2 cores

`gf.models.cnn("residual_bn", 50, width=16)`, 60 steps of batch 32 (random 16x16x3 inputs), SGD
0.01 momentum 0.9, `log_every=10`, wall time of each `gf.train` call (model build excluded).
Compiled steps are keyed by what the loss and optimizer compute
(`gradflow.instrument.same_code.code_key`), so the two later runs should take the same time.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import gradflow as gf


def run(tx, batches):
    model = gf.models.cnn("residual_bn", 50, width=16, rngs=nnx.Rngs(0))
    t = time.perf_counter()
    hist = gf.train(model, batches, steps=60, optimizer=tx, log_every=10)
    jax.block_until_ready(hist["grad_norm"])
    return time.perf_counter() - t


def main():
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 16, 16, 3))
    batches = [(x, jnp.arange(32) % 10)] * 60
    tx = optax.sgd(0.01, momentum=0.9)
    first = run(tx, batches)
    new = run(optax.sgd(0.01, momentum=0.9), batches)
    same = run(tx, batches)
    print(f"first run {first:.1f} s; later run, new optimizer object {new:.1f} s; "
          f"same object {same:.1f} s")


if __name__ == "__main__":
    main()
