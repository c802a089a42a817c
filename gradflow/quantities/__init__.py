"""Quantities beyond norms, per layer and for the whole network: gradient noise from per-example
gradients, curvature from Hessian-vector products, gradient histograms, distance from
initialization."""
