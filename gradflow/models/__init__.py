"""The model zoo: plain, residual, scaled-residual, BN and residual+BN networks from reusable
blocks."""
from .blocks import BranchScale, ResidualBlock, Unit, initial_branch_scale
from .layers import Activation, SeparableConv, make_conv
from .materialize import materialize
from .networks import MAX_DEPTH, Network, Stage, cnn, hidden_blocks, mlp
from .options import (
    ACTIVATIONS,
    ARCH_CHOICES,
    ARCHS,
    CONVS,
    INITS,
    NORMALIZED,
    RESIDUAL,
    SEPARABLE,
    STACKS,
    base_arch,
)
from .seed import SeedBlock, SeedResNet, seed_resnet
from .stack import Stack

__all__ = ["ACTIVATIONS", "ARCHS", "ARCH_CHOICES", "CONVS", "INITS", "MAX_DEPTH", "NORMALIZED",
           "RESIDUAL", "SEPARABLE", "STACKS", "Activation", "BranchScale", "Network",
           "ResidualBlock", "SeedBlock", "SeedResNet", "SeparableConv", "Stack", "Stage", "Unit",
           "base_arch", "cnn", "hidden_blocks", "initial_branch_scale", "make_conv",
           "materialize", "mlp", "seed_resnet"]
