"""The examples in gradflow's docstrings run and print what they show (doctest), so the API
reference cannot drift from the code."""
import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradflow as gf

MODULES = sorted(m.name for m in pkgutil.walk_packages(gf.__path__, "gradflow.")
                 if m.name != "gradflow.run")
NAMES = dict(gf=gf, np=np, jnp=jnp, jax=jax, nnx=nnx, optax=optax)


def test_the_examples_are_found():
    found = sum(len(t.examples) for m in MODULES
                for t in doctest.DocTestFinder().find(importlib.import_module(m)))
    assert found > 50


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module, globs={**vars(module), **NAMES}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
