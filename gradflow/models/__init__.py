"""The model zoo: plain, residual, BN and residual+BN networks from reusable blocks."""
from .blocks import ResidualBlock, Unit
from .layers import Activation, SeparableConv, make_conv
from .materialize import materialize
from .networks import MAX_DEPTH, Network, Stage, cnn, hidden_blocks, mlp
from .options import ACTIVATIONS, ARCH_CHOICES, ARCHS, CONVS, INITS, SEPARABLE, STACKS, base_arch
from .seed import SeedBlock, SeedResNet, seed_resnet
from .stack import Stack

__all__ = ["Activation", "SeparableConv", "make_conv", "Unit", "ResidualBlock", "Stack", "Stage",
           "Network", "cnn", "mlp", "seed_resnet", "SeedResNet", "SeedBlock", "hidden_blocks",
           "MAX_DEPTH", "materialize", "ARCHS", "ARCH_CHOICES", "SEPARABLE", "base_arch", "CONVS", "INITS", "ACTIVATIONS", "STACKS"]
