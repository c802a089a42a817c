"""`gf.CurvatureStart`: where the next curvature measurement of a user's loop starts.

Each measurement of `hess_max_ev` is an iteration on Hessian-vector products from a start
vector. From a random vector Lanczos takes 7-16 products on the depth-50 CNNs; from the last
measurement's Ritz vector, while the top eigenvector moves slowly, 5-10
(`benchmarks/warm_start.py`). `gf.train` keeps that vector itself; in a loop of one's own it
lives in a `CurvatureStart`, an NNX object passed to the jitted step like the optimizer:

    start = gf.CurvatureStart(model)
    grad_fn = gf.value_and_grad(loss_fn, curvature=True)

    @nnx.jit
    def step(model, optimizer, start, x, y):
        loss, grads, snap = grad_fn(model, x, y, curvature_start=start)
        optimizer.update(model, grads)
        return snap
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree

from .curvature import random_direction


class CurvatureStart(nnx.Pytree):
    """The start vector of the next curvature measurement, one per model.

    A measurement given it (`grad_fn(..., curvature_start=start)`) runs as `gf.train`'s do:
    Lanczos from the vector, to rtol 1e-3 or at most `training.CURVATURE_MAX_ITER` products,
    keeping its Lanczos vectors to return the Ritz vector (power iteration, from the same
    vector, where they would exceed `training.RITZ_BUDGET`), and stores the new vector here.
    `hess_max_ev_converged` says whether the product cap was reached first.

    Args:
      model: the model whose parameters' Hessian is measured (its `nnx.Param` state fixes
        the vector's size).
      seed: the seed of the first, random, vector (standard normal).

    Attributes:
      vector: an `nnx.Variable` holding the raveled vector (float32 or the parameters'
        common dtype), updated by each measurement.

    Example:
      >>> model = gf.models.mlp("plain", 2, width=4, in_features=3, num_classes=2,
      ...                       rngs=nnx.Rngs(0))
      >>> gf.CurvatureStart(model).vector.shape
      (26,)
    """

    def __init__(self, model, *, seed: int = 0):
        params = nnx.state(model, nnx.Param)
        if not jax.tree.leaves(params):
            raise ValueError("gf.CurvatureStart: the model has no nnx.Param")
        flat, _ = ravel_pytree(random_direction(params, jax.random.key(seed)))
        self.vector = nnx.Variable(flat)

    def direction(self, params):
        """The stored vector shaped like `params`.

        Args:
          params: the model's `nnx.Param` state.

        Returns:
          A pytree like `params`.

        Raises:
          ValueError: if the vector was made for a model of another size.
        """
        flat, unravel = ravel_pytree(params)
        stored = self.vector[...]
        if stored.shape != flat.shape:
            raise ValueError(f"gf.CurvatureStart holds {stored.shape[0]} values but the model "
                             f"has {flat.shape[0]} parameters: make it with "
                             f"gf.CurvatureStart(model) for this model")
        return unravel(stored.astype(flat.dtype))

    def store(self, vector) -> None:
        """Keeps `vector` (a pytree like the parameters) as the next start.

        Args:
          vector: the last measurement's eigenvector estimate.
        """
        flat, _ = ravel_pytree(vector)
        self.vector[...] = jnp.asarray(flat, self.vector[...].dtype)
