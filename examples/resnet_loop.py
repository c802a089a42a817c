"""A ResNet on gradflow's built-in image data, measured by gradflow in your own training loop.

What it shows: the zoo's residual network with BatchNorm (`gf.models.cnn("residual_bn", ...)`,
3x3 convs, two stages) trained on `gf.data.synthetic(seed=0)` (16x16 "texture pairs", 10
classes, generated, no downloads) by a loop that is entirely yours: `nnx.Optimizer` with optax,
an `nnx.jit` step with `gf.value_and_grad` + `gf.update_ratio` every k steps and your plain
`nnx.value_and_grad` step otherwise, `gf.History().append`, and held-out accuracy at the end
with BatchNorm on its running statistics (`nnx.view(model, use_running_average=True)`). Every
conv is a row: `stem/layer`, `stages/0/rest/blocks/0/conv1/layer`, ..., `head`.

Run (from the repository root):

    python examples/resnet_loop.py                     # under a minute on 2 CPU cores
    python examples/resnet_loop.py --quick --out /tmp/resnet   # a few steps, tiny network

It writes history.npz, figures, summary.json and report.html into --out (default runs/...).
"""
from __future__ import annotations

import time

import optax
from flax import nnx

import gradflow as gf
from gradflow.experiments.evaluation import evaluate
from _report import parse_args, train_loop, write_report  # examples/_report.py


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


grad_fn = gf.value_and_grad(loss_fn)  # a drop-in for nnx.value_and_grad, plus a Snapshot


@nnx.jit
def measured_step(model, optimizer, x, y):
    _, grads, snap = grad_fn(model, x, y)  # loss, grads, Snapshot (it holds the loss)
    return gf.update_ratio(snap, optimizer.update(model, grads))


@nnx.jit
def step(model, optimizer, x, y):  # the usual step
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def main():
    args = parse_args(__doc__, "resnet_loop")
    cfg = (dict(depth=6, width=8, stages=1, batch=16, steps=6, every=2, n_train=256, n_test=128)
           if args.quick else
           dict(depth=14, width=16, stages=2, batch=64, steps=200, every=20, n_train=8192,
                n_test=2048))
    cfg["steps"] = args.steps or cfg["steps"]
    ds = gf.data.synthetic(seed=0, n_train=cfg["n_train"], n_test=cfg["n_test"])
    model = gf.models.cnn("residual_bn", cfg["depth"], width=cfg["width"], stages=cfg["stages"],
                          num_classes=ds.num_classes, rngs=nnx.Rngs(0))
    schedule = optax.cosine_decay_schedule(3e-3, cfg["steps"])
    optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

    t0 = time.perf_counter()
    batches = gf.data.batches(ds.x_train, ds.y_train, batch_size=cfg["batch"], seed=0)
    history, losses = train_loop(model, optimizer, batches, cfg["steps"], cfg["every"],
                                 measured_step, step,
                                 {"arch": f"residual_bn, depth {cfg['depth']}"})
    # inference mode, BatchNorm on its running statistics, the model unchanged
    _, accuracy = evaluate(model, ds.x_test, ds.y_test)
    seconds = time.perf_counter() - t0

    write_report(
        args.out, f"ResNet ({cfg['depth']} weight layers, residual + BN) in your own loop",
        f"gf.models.cnn('residual_bn', {cfg['depth']}, width={cfg['width']}, "
        f"stages={cfg['stages']}) on gf.data.synthetic(seed=0), {cfg['n_train']} training "
        f"images; adam with cosine decay, batch {cfg['batch']}, measured every {cfg['every']} "
        f"steps in the user's own nnx.jit loop; held-out accuracy on {cfg['n_test']} images "
        f"(chance 10%).",
        history, losses,
        {"example": "resnet_loop", "quick": args.quick, **cfg,
         "held_out_accuracy": accuracy, "seconds": seconds},
        f"held-out accuracy {accuracy:.1%}")


if __name__ == "__main__":
    main()
