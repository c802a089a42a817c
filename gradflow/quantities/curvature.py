"""Curvature of the loss from Hessian-vector products, for the whole network and per row.

Every function takes the loss as a function of the parameters, `loss(params) -> scalar`, and
the parameters as a pytree (an `nnx.State` from `gradflow.probe.split_model`, or any pytree of
float arrays; per-row results need an `nnx.State`, whose paths `row_segments` names). Nothing
leaves the device: all of it runs under `jax.jit`, iterations as `lax.while_loop`s, samples as
chunked `vmap`s (or, with `unroll=True`, in straight-line code), their bodies' convolutions in
the layout XLA:CPU's fast kernels take (`conv_layout.canonical_convs`).

Hessian-vector products are forward-over-reverse (the tangent of the gradient), or
reverse-over-reverse where forward mode cannot pass the model, see `hvp`. The loss is
linearized once per call and every later product reuses that linearization.

Definitions follow Cockpit (Schneider, Dangel & Hennig, 2021): `max_eigenvalue` is HessMaxEV
(power iteration), `trace` estimates HessTrace (Hutchinson, 1990; exact for tiny models).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ..instrument.norms import flat_arrays
from ..conv_layout import canonical_convs, has_custom_vjp
from .rows import row_sum

Loss = Callable  # params -> scalar


class Eigen(NamedTuple):
    """A power-iteration or Lanczos result.

    Attributes:
      value: the eigenvalue of largest magnitude, with its sign (float32; NaN, see
        `max_eigenvalue`).
      vector: its unit eigenvector (power iteration) or Ritz vector (Lanczos with
        `ritz_vector=True`), a pytree like the parameters; pass it back as `v0`. None from
        Lanczos without `ritz_vector`.
      iterations: Hessian-vector products used (int32).
      converged: whether the residual fell to `rtol` (or the Krylov space closed) before
        `max_iter` products.
    """
    value: jax.Array
    vector: object
    iterations: jax.Array
    converged: jax.Array


class Trace(NamedTuple):
    """A Hessian-trace estimate.

    Attributes:
      value: tr(H) (float32; NaN, see `trace`).
      stderr: its standard error (0 where exact).
      rows: (n_rows,) traces of the rows' diagonal blocks, tr(H_rr); None without segments.
      rows_stderr: (n_rows,) their standard errors; None without segments.
    """
    value: jax.Array
    stderr: jax.Array
    rows: jax.Array | None
    rows_stderr: jax.Array | None


def check_scalar(loss: Loss, params) -> None:
    """Raises unless `loss(params)` is a real scalar (checked on shapes only, no computation).

    Args:
      loss: the loss function.
      params: its argument.

    Raises:
      ValueError: if the loss is not a 0-d floating-point array.
    """
    out = jax.eval_shape(loss, params)
    shape = getattr(out, "shape", None)
    if shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        what = f"shape {shape} {out.dtype}" if shape is not None else type(out).__name__
        raise ValueError(f"curvature needs a scalar loss(params), got {what}; reduce it "
                         f"(e.g. mean over the batch)")


def vdot(a, b) -> jax.Array:
    """⟨a, b⟩ over every leaf of two pytrees of the same structure, in float32.

    Args:
      a: a pytree of arrays.
      b: a pytree of arrays with the structure of `a`.

    Returns:
      A float32 scalar.
    """
    return sum((jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.float32(0))


def _scale(tree, s):
    return jax.tree.map(lambda a: (a * s).astype(a.dtype), tree)


def _like(v, params):
    return jax.tree.map(lambda a, p: jnp.asarray(a, p.dtype), v, params)


def hvp_fn(loss: Loss, params) -> Callable:
    """The map v -> H v at `params`, linearized once.

    Forward-over-reverse (`jax.linearize` of `jax.grad(loss)`): the forward and backward
    passes run once, here; each call of the returned function runs only their tangent
    (2.8-3.0x cheaper than the transposed backward pass on the depth-50 CNNs:
    `python benchmarks/conv_layout.py`). Where forward mode cannot pass a `jax.custom_vjp`
    function of the model, reverse-over-reverse instead (see `hvp`): the vector-Jacobian
    product of `jax.grad(loss)` (H is symmetric, so vᵀH = (Hv)ᵀ). Whether forward mode passes
    shows only when the product runs, so any `jax.custom_vjp` in the loss takes the second.

    Args:
      loss: params -> scalar.
      params: the point.

    Returns:
      A function of a direction `v` (same pytree as `params`) returning H v (same pytree).

    Raises:
      ValueError: if the loss is not a scalar.
    """
    check_scalar(loss, params)
    if not has_custom_vjp(jax.make_jaxpr(loss)(params).jaxpr):
        _, tangent = jax.linearize(jax.grad(loss), params)
        return lambda v: tangent(_like(v, params))
    _, pullback = jax.vjp(jax.grad(loss), params)
    return lambda v: pullback(_like(v, params))[0]


def hvp(loss: Loss, params, v):
    """Hessian-vector product H v of a scalar loss at `params`.

    Forward-over-reverse (`jax.linearize` of `jax.grad`, the usual recommendation and the
    cheaper one) where the loss has no `jax.custom_vjp` function; reverse-over-reverse
    (`jax.vjp` of `jax.grad`) where it has one: forward mode cannot differentiate a
    `jax.custom_vjp` function in general. It passes one only in special cases (the forward
    rule does not call the function itself); the standard pattern, where the forward rule returns
    `f(x), residuals`, fails with "can't apply forward-mode autodiff (jvp) to a custom_vjp
    function". Reverse-over-reverse needs only that the backward rule is differentiable, so it
    works on any model `jax.grad` works on whose custom backward rules are JAX code.

    Args:
      loss: params -> scalar, e.g.
        `lambda p: gf.losses.cross_entropy(nnx.merge(graphdef, p, rest)(x), y)`.
      params: the point, a pytree of float arrays.
      v: the direction, the same pytree (cast to the parameters' dtypes).

    Returns:
      H v, the same pytree as `params`.

    Raises:
      ValueError: if the loss is not a scalar.

    Example:
      >>> hvp(lambda w: jnp.sum(w ** 3), jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0]))
      Array([ 6., 12.], dtype=float32)
    """
    return hvp_fn(loss, params)(v)


def _normalize(v):
    """v / ‖v‖ and ‖v‖; a zero (or non-finite) v gives zeros, not NaN."""
    n = jnp.sqrt(vdot(v, v))
    ok = (n > 0) & jnp.isfinite(n)
    return _scale(v, jnp.where(ok, 1 / jnp.where(ok, n, 1), 0)), n, ok


def _power(matvec, v0, rtol: float, max_iter: int, unroll: bool) -> Eigen:
    """Power iteration on a symmetric operator: the eigenvalue of largest magnitude."""
    v, _, _ = _normalize(v0)

    def body(s):
        i, v, _, _, _ = s
        w = matvec(v)
        lam = vdot(v, w)  # the Rayleigh quotient vᵀHv of the unit vector v
        r = jax.tree.map(lambda a, b: a - lam * b, w, v)  # the residual Hv - λv
        w, _, ok = _normalize(w)  # ok: Hv is nonzero and finite
        lam = jnp.where(ok, lam, jnp.nan)
        conv = ok & (jnp.sqrt(vdot(r, r)) <= rtol * jnp.abs(lam))
        v = jax.tree.map(lambda a, b: jnp.where(ok, a, b), w, v)
        return i + 1, v, lam, conv | ~ok, conv

    s = (jnp.int32(0), v, jnp.float32(jnp.nan), jnp.bool_(False), jnp.bool_(False))
    if unroll:  # every product computed, the state frozen once done: no control flow
        for _ in range(max_iter):
            s = jax.tree.map(lambda old, new, done=s[3]: jnp.where(done, old, new), s, body(s))
    else:
        s = lax.while_loop(lambda s: (s[0] < max_iter) & ~s[3], canonical_convs(body), s)
    i, v, lam, _, conv = s
    return Eigen(lam, v, i, conv)


def _lanczos_step(matvec, q, q_prev, beta):
    """One step of the Lanczos recurrence from the unit vector `q`.

    Returns:
      (alpha = qᵀHq, the next unit vector, its β, ok: Hq nonzero and finite, closed: the
      Krylov space closed, so the tridiagonal matrix's eigenvalues are exact).
    """
    hq = matvec(q)
    alpha = vdot(q, hq)
    w = jax.tree.map(lambda h, a, b: h - alpha * a - beta * b, hq, q, q_prev)
    q_next, beta_next, _ = _normalize(w)
    hq_norm = jnp.sqrt(vdot(hq, hq))
    ok = (hq_norm > 0) & jnp.isfinite(hq_norm) & jnp.isfinite(alpha)
    closed = beta_next <= 1e-6 * jnp.maximum(jnp.abs(alpha) + beta, hq_norm)
    return alpha, q_next, beta_next, ok, closed


def _top_pair(alphas, off, k):
    """The eigenvalue θ of largest magnitude of the leading k x k block of the symmetric
    tridiagonal matrix with diagonal `alphas` (m,) and off-diagonal `off` (m - 1,), zero past
    the block, and its unit eigenvector s (m,), zero past the block.

    With β the recurrence's next off-diagonal, β |s_k| is the norm of the Ritz pair's residual
    ‖Hy − θy‖ (y = Σⱼ sⱼqⱼ), which bounds the distance from θ to an eigenvalue of H."""
    values, vectors = jnp.linalg.eigh(_tridiagonal(alphas, off))
    keep = jnp.arange(alphas.shape[0]) < k
    # zeros past the block add zero eigenvalues with eigenvectors outside it: pick within it
    inside = jnp.sum(jnp.where(keep[:, None], vectors ** 2, 0), axis=0) > 0.5
    top = jnp.argmax(jnp.where(inside, jnp.abs(values), -1))
    return values[top], jnp.where(keep, vectors[:, top], 0)


def _top_ritz(alphas, off, k):
    """`_top_pair` of each block (leading axes of `alphas` (..., m), `off` (..., m - 1) and `k`):
    (θ, s_k), the value and its eigenvector's last component in the block."""
    lead, m = alphas.shape[:-1], alphas.shape[-1]
    k = jnp.broadcast_to(k, lead).reshape(-1)
    theta, s = jax.vmap(_top_pair)(alphas.reshape(-1, m), off.reshape(-1, m - 1), k)
    return theta.reshape(lead), s[jnp.arange(k.shape[0]), k - 1].reshape(lead)


def _tridiagonal(diagonal, off):
    """The symmetric tridiagonal matrix with `diagonal` (m,) and off-diagonal `off` (m - 1,)."""
    return jnp.diag(diagonal) + jnp.diag(off, 1) + jnp.diag(off, -1)


def _lanczos(matvec, v0, rtol: float, max_iter: int, unroll: bool,
             ritz_vector: bool = False) -> Eigen:
    """Lanczos on a symmetric operator: the Ritz value of largest magnitude.

    The three-term recurrence without reorthogonalization (two vectors of memory, as power
    iteration): lost orthogonality only repeats converged Ritz values, it does not move the
    extreme one. The loop takes the leading k x k block's eigenvalues after every product (a
    dense solve of the smallest of 16, 32, 64, ... or `max_iter` rows that holds the block,
    small next to a Hessian-vector product); `unroll` computes
    every product straight-line, then all blocks' eigenvalues in one batched solve, and reports
    where the loop would have stopped (the same value, iterations and flag). `ritz_vector`
    keeps the Lanczos vectors (`max_iter` flat parameter vectors) and returns the Ritz vector
    of the value, Σⱼ sⱼ qⱼ for the top eigenvector s of the k x k tridiagonal matrix."""
    q, _, _ = _normalize(v0)
    flat, unravel = ravel_pytree(q) if ritz_vector else (None, None)
    q_prev, beta = _scale(q, 0.0), jnp.float32(0)
    if unroll:
        steps, basis = [], []
        for _ in range(max_iter):
            alpha, q_next, beta_next, ok, closed = _lanczos_step(matvec, q, q_prev, beta)
            steps.append((alpha, beta_next, ok, closed))
            basis.append(ravel_pytree(q)[0] if ritz_vector else None)
            q_prev, q, beta = q, q_next, beta_next
        a, b, oks, closed = (jnp.stack(x) for x in zip(*steps))
        k = jnp.arange(max_iter)[:, None]  # block k holds the first k + 1 products
        j = jnp.arange(max_iter)[None, :]
        ok = jnp.cumprod(oks).astype(bool)  # a failed product ends the recurrence
        top, s_k = _top_ritz(jnp.nan_to_num(jnp.where(j <= k, a, 0)),
                             jnp.nan_to_num(jnp.where(j[:, :-1] < k, b[:-1], 0)), k[:, 0] + 1)
        lam = jnp.where(ok, top, jnp.nan)
        conv = ok & ((b * jnp.abs(s_k) <= rtol * jnp.abs(lam)) | closed)
        stop = conv | ~ok
        last = jnp.where(jnp.any(stop), jnp.argmax(stop), max_iter - 1)
        vector = (_ritz(a, b, last + 1, jnp.stack(basis), unravel, flat)
                  if ritz_vector else None)
        return Eigen(lam[last], vector, (last + 1).astype(jnp.int32), conv[last])

    index = jnp.arange(max_iter - 1)
    sizes = [n for n in (16 << k for k in range(max_iter.bit_length())) if n < max_iter]
    sizes.append(max_iter)
    solves = [lambda a, b, k, n=n: _top_ritz(a[:n], b[:n - 1], k) for n in sizes]

    def body(s):
        i, q, q_prev, beta, alphas, betas, _, _, _, basis = s
        alpha, q_next, beta_next, ok, closed = _lanczos_step(matvec, q, q_prev, beta)
        alphas = alphas.at[i].set(alpha)
        which = jnp.searchsorted(jnp.asarray(sizes), i + 1)  # the smallest block holding i + 1
        top, s_k = lax.switch(which, solves, alphas, jnp.where(index < i, betas[:-1], 0), i + 1)
        lam = jnp.where(ok, top, jnp.nan)
        conv = ok & ((beta_next * jnp.abs(s_k) <= rtol * jnp.abs(lam)) | closed)
        betas = betas.at[i].set(beta_next)
        if ritz_vector:
            basis = basis.at[i].set(ravel_pytree(q)[0])
        return i + 1, q_next, q, beta_next, alphas, betas, lam, conv | ~ok, conv, basis

    zeros = jnp.zeros((max_iter,), jnp.float32)
    basis = jnp.zeros((max_iter, flat.size), flat.dtype) if ritz_vector else None
    s = (jnp.int32(0), q, q_prev, beta, zeros, zeros, jnp.float32(jnp.inf), jnp.bool_(False),
         jnp.bool_(False), basis)
    s = lax.while_loop(lambda s: (s[0] < max_iter) & ~s[7], canonical_convs(body), s)
    vector = _ritz(s[4], s[5], s[0], s[9], unravel, flat) if ritz_vector else None
    return Eigen(s[6], vector, s[0], s[8])


def _ritz(alphas, betas, k, basis, unravel, fallback):
    """The unit Ritz vector of the largest-magnitude eigenvalue of the leading k x k block of
    the tridiagonal matrix (`alphas`, `betas`), from the Lanczos vectors `basis` (rows); the
    start vector `fallback` where it is not finite (a failed product)."""
    m = alphas.shape[0]
    a = jnp.nan_to_num(jnp.where(jnp.arange(m) < k, alphas, 0))
    b = jnp.nan_to_num(jnp.where(jnp.arange(m - 1) < k - 1, betas[:-1], 0))
    v, _, ok = _normalize(_top_pair(a, b, k)[1] @ basis)
    return unravel(jnp.where(ok, v, fallback))


def _batched(fn, xs, chunk: int, unroll: bool):
    """`vmap(fn)(xs)`, `chunk` elements at a time: one `vmap` when they fit, else a `lax.map`
    over chunks (or, with `unroll`, the chunks in straight-line code)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if n <= chunk:
        return jax.vmap(fn)(xs)
    if not unroll:
        return lax.map(canonical_convs(fn), xs, batch_size=chunk)
    parts = [jax.vmap(fn)(jax.tree.map(lambda a, i=i: a[i:i + chunk], xs))
             for i in range(0, n, chunk)]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _random(key, params, kind: str):
    """A random pytree like `params`: one draw of the flat vector (one generator call)."""
    flat, unravel = ravel_pytree(params)
    draw = jax.random.rademacher if kind == "rademacher" else jax.random.normal
    return unravel(draw(key, flat.shape, flat.dtype))


def random_direction(params, key=None):
    """A random direction like `params`, to start the power iteration from (it normalizes);
    a training loop passes arrays every time, so its compiled step is traced once.

    Args:
      params: the parameters (a pytree of float arrays).
      key: a JAX random key; default `jax.random.key(0)`.

    Returns:
      A pytree like `params` of standard-normal draws.
    """
    return _random(_key(key), params, "normal")


def _key(key):
    return jax.random.key(0) if key is None else key


def _check_chunk(chunk):
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")


METHODS = ("power", "lanczos")


def _check_eigen_args(rtol, max_iter, method="power"):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol!r}")


def max_eigenvalue(loss: Loss, params, *, v0=None, rtol: float = 1e-3, max_iter: int = 100,
                   key: jax.Array | None = None, unroll: bool = False,
                   method: str = "power", ritz_vector: bool = False) -> Eigen:
    """The Hessian's eigenvalue of largest magnitude, by power iteration (Cockpit's HessMaxEV)
    or Lanczos.

    Power iteration finds the eigenvalue of largest |λ|, returned with its sign: the largest
    eigenvalue when the most negative one is smaller in magnitude, as is usual in training;
    a large negative value means strong negative curvature dominates. Each iteration is one
    Hessian-vector product; the estimate is the Rayleigh quotient θ = vᵀHv of the unit vector
    v, as in Cockpit. The loop stops when the residual is small, ‖Hv − θv‖ ≤ rtol |θ|, or after
    `max_iter` products: then H has an eigenvalue within rtol |θ| of θ (within ‖Hv − θv‖² / gap
    of it, the gap separating that eigenvalue from the rest of the spectrum). Cockpit stops
    instead when two consecutive estimates agree to rtol; that tests the last change, not the
    error, and stops early wherever the estimate passes through a plateau: on the depth-50
    plain CNN after 60 SGD steps, at 0.2433 after 11 products where λ₁ = 0.2718 (the residual
    test takes 85 products; Lanczos 18: `benchmarks/lanczos_vs_power.py --train-steps 60
    --iters 100`). When λ and −λ are both eigenvalues of largest
    magnitude the iteration does not converge; `converged` says so.

    Warm start: pass the previous measurement's `vector` as `v0`; while the top eigenvector
    changes slowly, a few products suffice instead of tens.

    `method="lanczos"`: the Lanczos recurrence from the same start, the estimate being the
    Ritz value θ of largest magnitude of the k x k tridiagonal matrix built so far, with the
    same stopping rule on the Ritz pair's residual, which the recurrence gives without another
    product (β_{k+1} |s_k|, s the Ritz value's unit eigenvector in the tridiagonal matrix), and
    stopping when the Krylov space closes, where the value is exact. From a random start it
    takes a quarter of power iteration's products (`benchmarks/lanczos_vs_power.py`: 12-16
    against 55-59 on the depth-50 CNNs, both within 1.3e-5 of λ₁). With `ritz_vector=True`
    it keeps its `max_iter` Lanczos vectors (`max_iter` × the parameter count floats) and
    returns the Ritz vector, the best approximation to the eigenvector in the Krylov space, to
    warm-start the next measurement; without, `vector` is None and memory is that of power
    iteration. From the same warm start, k Lanczos products give a value at least as close to
    λ₁ as k power products: the power iterate lies in the same Krylov space.

    NaN: when a Hessian-vector product is exactly zero (or not finite), the value is NaN,
    `converged` is False and the loop stops. An exactly zero H v means the loss, as autodiff
    sees it, has no curvature along v: the parameters reach it only through operations whose
    derivative is zero (`jnp.round`, integer casts, `lax.stop_gradient`), or it is linear in
    them. No eigenvector can be found from zero products, and 0 would be a number no training
    curvature gives, so NaN says the quantity is undefined for this loss. A non-finite loss
    (diverged training) gives NaN too.

    Args:
      loss: params -> scalar.
      params: the point, a pytree of float arrays.
      v0: the starting direction (same pytree; normalized here); default a standard normal
        draw from `key`.
      rtol: the relative tolerance of the residual, ‖Hv − θv‖ ≤ rtol |θ| (1e-3, Cockpit's
        rtol).
      max_iter: the most Hessian-vector products (Cockpit's 100).
      key: the PRNG key for the random start; default `jax.random.key(0)`.
      unroll: False: a `lax.while_loop` that stops at convergence. True: exactly `max_iter`
        products in straight-line code, the result frozen once converged (the same value,
        iterations and flag); compile time grows with `max_iter`. The loop's convolutions
        run as fast as straight-line ones (`conv_layout.canonical_convs`); without that,
        XLA:CPU ran them about 10-30x slower inside the loop (JAX issue 12868).
      method: "power" or "lanczos".
      ritz_vector: with "lanczos", keep the Lanczos vectors and return the Ritz vector.

    Returns:
      An `Eigen`: (value, vector, iterations, converged); vector None with "lanczos" unless
      `ritz_vector`.

    Raises:
      ValueError: if the loss is not a scalar, or `rtol` / `max_iter` / `method` are invalid.

    Example:
      >>> loss = lambda w: 0.5 * (3.0 * w[0] ** 2 - 1.0 * w[1] ** 2)
      >>> ev = max_eigenvalue(loss, jnp.array([1.0, 1.0]), rtol=1e-6)
      >>> round(float(ev.value), 4), bool(ev.converged)
      (3.0, True)
    """
    _check_eigen_args(rtol, max_iter, method)
    matvec = hvp_fn(loss, params)
    v0 = _random(_key(key), params, "normal") if v0 is None else _like(v0, params)
    if method == "lanczos":
        return _lanczos(matvec, v0, rtol, max_iter, unroll, ritz_vector)
    return _power(matvec, v0, rtol, max_iter, unroll)


def _leaf_paths(params) -> list[tuple]:
    """The `flat_arrays` path of each leaf of `params`, in `jax.tree.leaves` order."""
    def entry(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return getattr(k, attr)
        return k

    known = set(flat_arrays(params))
    out = []
    for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tuple(entry(k) for k in kp)
        if path not in known and path[:-1] in known:  # an nnx.Variable's `value`
            path = path[:-1]
        if path not in known:
            raise ValueError(f"cannot match parameter leaf {path} to a row segment path")
        out.append(path)
    return out


def _row_owner(params, segments):
    """Per leaf, an int32 array of its shape: the block each element belongs to (-1: none).

    Rows with identical segments (a layer called twice) share one block.

    Returns:
      (owner pytree, blocks: tuple of unique segments, row_block: np.ndarray row -> block).
    """
    blocks = tuple(dict.fromkeys(segments))
    row_block = np.array([blocks.index(s) for s in segments], np.int32)
    leaves, treedef = jax.tree.flatten(params)
    owners = {path: np.full(np.shape(p), -1, np.int32)
              for path, p in zip(_leaf_paths(params), leaves)}
    for b, seg in enumerate(blocks):
        for path, index in seg:
            where = slice(None) if index is None else index
            if np.any(owners[path][where] != -1):
                raise ValueError(f"parameter {path} belongs to two different rows' blocks")
            owners[path][where] = b
    owner = [owners[path] for path in _leaf_paths(params)]
    return jax.tree.unflatten(treedef, [jnp.asarray(o) for o in owner]), blocks, row_block


def block_max_eigenvalues(loss: Loss, params, segments, *, v0=None, rtol: float = 1e-3,
                          max_iter: int = 100, key: jax.Array | None = None,
                          chunk: int = 8, unroll: bool = False) -> Eigen:
    """Each row's largest-magnitude eigenvalue of its diagonal Hessian block H_rr.

    H_rr is the Hessian restricted to row r's parameters (kernel and bias; see `row_segments`).
    Power iteration as in `max_eigenvalue`, with directions supported on row r only:
    v ← P_r H P_r v, P_r zeroing every other parameter. Opt-in and costly: every iteration is
    one Hessian-vector product per row (n_rows products, vmapped over `chunk` rows at a
    time), and the state holds n_rows parameter-sized vectors. NaN for a row whose block
    products are zero (see `max_eigenvalue`), e.g. a row no gradient reaches.

    Args:
      loss: params -> scalar.
      params: the point, an `nnx.State`.
      segments: `row_segments(params, layout)`.
      v0: the previous result's `vector` (a pytree of (n_rows, ...) leaves) to warm-start;
        default a standard normal draw from `key`.
      rtol: the relative tolerance of the residual, as in `max_eigenvalue`.
      max_iter: the most iterations per row.
      key: the PRNG key for the random start; default `jax.random.key(0)`.
      chunk: rows whose products are computed together (memory: `chunk` times the
        products' working set).
      unroll: as in `max_eigenvalue`; the row chunks too run in straight-line code.

    Returns:
      An `Eigen` with a leading row axis: values, iterations and converged (n_rows,);
      vector, a pytree like `params` with (n_rows, ...) leaves, row r's supported on row r.

    Raises:
      ValueError: if the loss is not a scalar, or the arguments are invalid.
    """
    _check_eigen_args(rtol, max_iter)
    _check_chunk(chunk)
    matvec = hvp_fn(loss, params)
    n_rows = len(segments)
    if n_rows == 0:
        empty = jax.tree.map(lambda p: jnp.zeros((0, *p.shape), p.dtype), params)
        return Eigen(jnp.zeros((0,), jnp.float32), empty, jnp.zeros((0,), jnp.int32),
                     jnp.zeros((0,), bool))
    owner, _, row_block = _row_owner(params, segments)
    if v0 is None:
        keys = jax.random.split(_key(key), n_rows)
        v0 = jax.vmap(lambda k: _random(k, params, "normal"))(keys)
    else:
        v0 = jax.tree.map(lambda a, p: jnp.asarray(a, p.dtype), v0, params)

    def one(args):
        block, start = args

        def project(v):
            return jax.tree.map(lambda a, o: jnp.where(o == block, a, 0).astype(a.dtype),
                                v, owner)

        return _power(lambda v: project(matvec(project(v))), project(start), rtol, max_iter,
                      unroll)

    return _batched(one, (jnp.asarray(row_block), v0), chunk, unroll)


def trace(loss: Loss, params, *, samples: int = 32, key: jax.Array | None = None,
          segments=None, exact_below: int = 64, chunk: int = 8, unroll: bool = False) -> Trace:
    """tr(H), by Hutchinson's estimator with its standard error; exact for tiny models.

    Hutchinson: tr(H) = E[vᵀHv] for v with independent Rademacher (±1) entries; the estimate is
    the mean of `samples` draws and its standard error the draws' standard deviation over
    √samples (the variance of one draw is 2 Σ_{i≠j} H_ij², so the error is small when H is
    nearly diagonal). Per row, the same products give tr(H_rr) = E[v_rᵀ(Hv)_r], v_r being v
    on row r's parameters, with standard errors likewise. Draws are vmapped `chunk` at a time,
    so memory holds `chunk` products, whatever `samples` is.

    Exact when the model has at most `exact_below` parameters: Σᵢ eᵢᵀHeᵢ over the basis
    vectors, one product each (standard errors 0).

    NaN (value, stderr and rows): when every product H v is exactly zero, as for a loss that
    reaches the parameters only through zero-derivative operations (see `max_eigenvalue`);
    autodiff then sees no curvature at all and 0 would hide that. A row whose own block is
    zero while others are not gets its true trace, 0.

    Args:
      loss: params -> scalar.
      params: the point, a pytree of float arrays (an `nnx.State` with `segments`).
      samples: Rademacher draws (at least 2).
      key: the PRNG key; default `jax.random.key(0)`.
      segments: `row_segments(params, layout)` for per-row traces; None for the whole only.
      exact_below: parameter count up to which the trace is computed exactly.
      chunk: products computed together (one `vmap`); more samples than `chunk` run as a
        `lax.map` over chunks.
      unroll: run the chunks in straight-line code instead of a `lax.map`.

    Returns:
      A `Trace`: (value, stderr, rows, rows_stderr).

    Raises:
      ValueError: if the loss is not a scalar, or `samples` / `chunk` are invalid.

    Example:
      >>> loss = lambda w: 0.5 * (3.0 * w[0] ** 2 - 1.0 * w[1] ** 2) + w[0] * w[1]
      >>> t = trace(loss, jnp.array([1.0, 1.0]))
      >>> float(t.value), float(t.stderr)
      (2.0, 0.0)
    """
    _check_chunk(chunk)
    matvec = hvp_fn(loss, params)
    flat, unravel = ravel_pytree(params)
    size = flat.size
    exact = size <= exact_below
    if not exact and not (isinstance(samples, int) and samples >= 2):
        raise ValueError(f"samples must be an int >= 2, got {samples!r}")

    def draw(v):
        w = matvec(v)
        rows = (row_sum(jnp.multiply, flat_arrays(v), segments, flat_arrays(w))
                if segments else jnp.zeros((1,), jnp.float32))  # (a (0,) cannot be chunked)
        return vdot(v, w), rows, vdot(w, w) > 0

    if exact:
        basis = lambda i: unravel(jax.nn.one_hot(i, size, dtype=flat.dtype))
        s, rows, nonzero = _batched(lambda i: draw(basis(i)), jnp.arange(size), chunk, unroll)
        value, stderr = jnp.sum(s), jnp.float32(0)
        rows_value, rows_stderr = jnp.sum(rows, 0), jnp.zeros(rows.shape[1:], jnp.float32)
    else:
        keys = jax.random.split(_key(key), samples)
        s, rows, nonzero = _batched(lambda k: draw(_random(k, params, "rademacher")), keys,
                                    chunk, unroll)
        root = math.sqrt(samples)
        value, stderr = jnp.mean(s), jnp.std(s, ddof=1) / root
        rows_value, rows_stderr = jnp.mean(rows, 0), jnp.std(rows, 0, ddof=1) / root
    seen = jnp.any(nonzero)
    nan = lambda a: jnp.where(seen, a, jnp.nan)
    if segments is None:
        return Trace(nan(value), nan(stderr), None, None)
    if not segments:
        rows_value = rows_stderr = jnp.zeros((0,), jnp.float32)
    return Trace(nan(value), nan(stderr), nan(rows_value), nan(rows_stderr))


def stability_edge(lr: float, momentum: float = 0.0) -> float:
    """The sharpness above which gradient descent is unstable: (2 + 2β) / lr, 2 / lr for β = 0.

    Along a Hessian eigendirection with eigenvalue λ, a step of (heavy-ball) gradient descent
    multiplies the distance to the minimum by a factor whose size exceeds 1 once λ > (2 + 2β) /
    lr (Cohen et al. 2021, "Gradient descent on neural networks typically occurs at the edge of
    stability", who also state the momentum case).

    Args:
      lr: the learning rate, > 0.
      momentum: the heavy-ball momentum β, 0 <= β < 1.

    Returns:
      The edge, in units of the loss's curvature.

    Example:
      >>> stability_edge(0.05), round(stability_edge(0.01, 0.9), 6)
      (40.0, 380.0)
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return (2 + 2 * momentum) / lr


def edge_of_stability(max_ev, lr, momentum: float = 0.0):
    """How far the sharpness is from the edge of stability: max_ev / stability_edge(lr, β).

    Gradient descent with learning rate lr is unstable along a direction whose curvature
    exceeds 2 / lr ((2 + 2β) / lr with heavy-ball momentum β); full-batch training drifts up to
    that value and hovers there (Cohen et al. 2021). A ratio ≥ 1 means training is at or past
    the edge; NaN stays NaN.

    Args:
      max_ev: the Hessian's largest eigenvalue (`max_eigenvalue(...).value`), any shape.
      lr: the learning rate, > 0.
      momentum: the heavy-ball momentum β, 0 <= β < 1.

    Returns:
      max_ev / stability_edge(lr, momentum), a float32 array.

    Raises:
      ValueError: if `lr` is not positive or `momentum` is outside [0, 1).

    Example:
      >>> float(edge_of_stability(40.0, 0.05)), float(edge_of_stability(380.0, 0.01, 0.9))
      (1.0, 1.0)
    """
    return jnp.asarray(max_ev, jnp.float32) / stability_edge(lr, momentum)
