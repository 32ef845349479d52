"""fastgrad for PyTorch: the derivatives autograd computes, checked by finite differences.

>>> report = fastgrad.torch.check_function(MyFunction.apply, x, w)   # x, w requires_grad
>>> report = fastgrad.torch.check_module(net, torch.nn.functional.mse_loss, X, Y)
>>> mon = fastgrad.torch.Monitor(net, loss_fn, every=100)             # mon.step(x, y)

Importing this package imports torch; ``import fastgrad`` does not.
"""

from .function import check_function
from .module import Monitor, check_module

__all__ = ["Monitor", "check_function", "check_module"]
