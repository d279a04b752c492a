"""Gluon layers for binary and k-bit networks."""
from .activation import QActivation
from .binary_conv import BinaryConvolution
from .conv import QConv2D
from .dense import QDense

__all__ = ["QActivation", "QConv2D", "QDense", "BinaryConvolution", "quantized_layers"]


def quantized_layers(block):
    """All QConv2D and QDense layers inside block (itself included), in registration order."""
    found = []

    def visit(b):
        if isinstance(b, (QConv2D, QDense)):
            found.append(b)
        for child in b._children.values():
            visit(child)

    visit(block)
    return found
