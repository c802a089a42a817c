"""Datasets: the built-in generated task and minibatch iteration.

    from gradflow import data
    ds = data.synthetic(seed=0)             # ds.x_train (8192, 16, 16, 3) float32, ds.y_train ...
    it = data.batches(ds.x_train, ds.y_train, batch_size=32, seed=0)
"""
from .batches import batches
from .synthetic import PAIRS, Dataset, synthetic

# Name -> loader(seed=...) -> Dataset; the CLI's --dataset choices.
DATASETS = {"synthetic": synthetic}

__all__ = ["Dataset", "synthetic", "batches", "DATASETS", "PAIRS"]
