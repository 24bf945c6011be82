"""The gradient with respect to the input image through a 3-channel convolution, by the kernel that is fast for it.

Every attack step and every free-AT replay needs the loss's gradient with respect to the *image*, so it runs the
backward-data pass of the model's stem convolution (3 input channels), which natural training never runs. On a CPU,
PyTorch sends that pass to oneDNN, whose backward-data kernel is slow when the gradient has only 3 channels;
PyTorch's own im2col kernel (``aten::_slow_conv2d_backward``, what PyTorch uses when oneDNN is off) computes the same
gradient 2-6x faster. Measured with one thread on this project's CPU (see BENCHMARKS.md), in milliseconds:

=====================================  =======  ================  ==============
stem conv (input)                      forward  oneDNN input grad native input grad
=====================================  =======  ================  ==============
resnet 7x7/2, 64 ch (64 x 3x64x64)       23         52-60             20-21
convnext 4x4/4, 96 ch (16 x 3x224x224)    6         42-45              7-8
vit 16x16/16, 768 ch (16 x 3x224x224)    33        190-200            30-35
cifar 3x3/1, 64 ch (128 x 3x32x32)       34         24-35              5-9
=====================================  =======  ================  ==============

For a ResNet-18 at 64 px that is ~35 ms of a ~720 ms step: FGSM-RS pays it once per minibatch, PGD-k k times and
free AT on every replay, so it is most of the distance between those methods and their pass-count limits.

:func:`use_fast_input_grad` gives each plain 3-input-channel ``nn.Conv2d`` of a model the class
:class:`InputGradConv2d`, an ``nn.Conv2d`` (same parameters, same ``state_dict`` keys, same forward kernel) whose
backward computes the *input* gradient with the native kernel, and the weight and bias gradients as before. It only
does so where it helps and changes nothing else:

* on CPU, in fp32 (no autocast), and only when the input requires a gradient (an attack, a free-AT replay); a
  natural training step, whose input needs no gradient, runs the ordinary convolution, bit for bit;
* on CUDA (cuDNN), under autocast and inside ``torch.compile`` (``train.compile``) the ordinary convolution runs.

The input gradient it returns is the same quantity computed in a different order: it agrees with oneDNN's to float
rounding (~1e-5 relative; ``tests/test_input_grad.py``). This is hand-written because no library offers it: it is a
kernel choice for one layer, not a feature of timm or PyTorch.

Must not: change a model's parameters, state_dict or forward result.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class _NativeInputGradConv2d(torch.autograd.Function):
    """``F.conv2d`` (groups 1, dilation 1) whose input gradient comes from PyTorch's native CPU kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten._slow_conv2d_backward(grad_out, x, weight, list(weight.shape[-2:]),
                                                          list(ctx.stride), list(ctx.padding),
                                                          [True, False, False])[0]
        if need_w or (need_b and ctx.has_bias):
            # the parameters' gradients exactly as the ordinary convolution computes them (oneDNN on CPU)
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(ctx.stride),
                list(ctx.padding), [1, 1], False, [0, 0], 1, [False, need_w, need_b and ctx.has_bias])
        return grad_x, grad_w, grad_b, None, None


_STATE = threading.local()


@contextlib.contextmanager
def input_only() -> Iterator[None]:
    """Forwards whose backward will need the input gradient only (an attack step: ``attacks.input_gradient``).

    A custom autograd function cannot tell which of its inputs' gradients a particular backward call needs (its
    ``needs_input_grad`` says which *could* be), so without this it would also compute the stem's weight gradient
    for an attack, which the ordinary convolution skips; inside this context it is given detached parameters."""
    before = getattr(_STATE, "input_only", False)
    _STATE.input_only = True
    try:
        yield
    finally:
        _STATE.input_only = before


class InputGradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose input gradient, on CPU in fp32, comes from the native kernel (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.requires_grad and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()):  # a compiled model gets inductor's own kernels
            weight, bias = self.weight, self.bias
            if getattr(_STATE, "input_only", False):
                weight, bias = weight.detach(), None if bias is None else bias.detach()
            return _NativeInputGradConv2d.apply(x, weight, bias, self.stride, self.padding)
        return super().forward(x)


def _eligible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.in_channels == 3 and m.groups == 1 and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def use_fast_input_grad(model: nn.Module) -> int:
    """Give every plain 3-input-channel ``nn.Conv2d`` of ``model`` the :class:`InputGradConv2d` class, in place;
    returns how many. Parameters, buffers, ``state_dict`` keys and outputs are unchanged."""
    convs = [m for m in model.modules() if _eligible(m)]
    for m in convs:
        m.__class__ = InputGradConv2d
    return len(convs)


def use_default_input_grad(model: nn.Module) -> int:
    """Undo :func:`use_fast_input_grad` (``bench --peers`` gives the peers PyTorch's default kernels)."""
    convs = [m for m in model.modules() if type(m) is InputGradConv2d]
    for m in convs:
        m.__class__ = nn.Conv2d
    return len(convs)
