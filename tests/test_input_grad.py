"""The stem convolution's input gradient by PyTorch's native CPU kernel (robustify/input_grad.py): the same
gradients as the ordinary convolution, the same parameters and state_dict, and the ordinary path wherever the input
needs no gradient."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from robustify import attacks
from robustify.input_grad import InputGradConv2d, input_only, use_default_input_grad, use_fast_input_grad
from robustify.models import wrap

# (out channels, kernel, stride, padding, bias, input side): a ResNet stem, a ConvNeXt patchify stem, a ViT patch
# embedding, a CIFAR 3x3 stem
STEMS = [(16, 7, 2, 3, False, 32), (24, 4, 4, 0, True, 32), (32, 8, 8, 0, True, 32), (16, 3, 1, 1, True, 16)]


def _pair(out_ch: int, k: int, stride: int, pad: int, bias: bool) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(3, out_ch, k, stride, pad, bias=bias)
    fast = copy.deepcopy(plain)
    assert use_fast_input_grad(fast) == 1 and type(fast) is InputGradConv2d
    return plain, fast


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_ch,k,stride,pad,bias,side", STEMS)
def test_same_outputs_and_gradients_as_the_ordinary_convolution(out_ch, k, stride, pad, bias, side, channels_last):
    plain, fast = _pair(out_ch, k, stride, pad, bias)
    x = torch.rand(4, 3, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for conv in (plain, fast):
        xi = x.clone().requires_grad_(True)
        out = conv(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # a non-uniform upstream gradient
        results.append((out.detach(), xi.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad))
    (o1, gx1, gw1, gb1), (o2, gx2, gw2, gb2) = results
    assert torch.equal(o1, o2)  # the forward is the ordinary kernel
    assert gx2.shape == gx1.shape and not torch.equal(gx1, torch.zeros_like(gx1))
    torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-6)  # another kernel for the same sum: float rounding
    torch.testing.assert_close(gw2, gw1, rtol=1e-6, atol=1e-7)
    if bias:
        torch.testing.assert_close(gb2, gb1)


def test_natural_step_is_the_ordinary_convolution_bit_for_bit():
    """An input that needs no gradient (natural training, the training pass of FGSM-RS) takes the ordinary path."""
    plain, fast = _pair(16, 7, 2, 3, True)
    x = torch.rand(4, 3, 32, 32)
    for conv in (plain, fast):
        conv(x).square().sum().backward()
    assert torch.equal(plain.weight.grad, fast.weight.grad) and torch.equal(plain.bias.grad, fast.bias.grad)
    assert fast(x).grad_fn.name() == plain(x).grad_fn.name()


def test_attack_computes_no_weight_gradient():
    """Inside input_only() (every attack step) the stem's weights get no gradient, as with torch.autograd.grad."""
    _, fast = _pair(16, 7, 2, 3, True)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    with input_only():
        out = fast(x)
    out.sum().backward()
    assert x.grad is not None and fast.weight.grad is None and fast.bias.grad is None


def test_autocast_and_no_grad_take_the_ordinary_path():
    plain, fast = _pair(16, 7, 2, 3, True)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x))


@pytest.mark.parametrize("arch", ["test_resnet", "test_convnext", "test_vit"])
def test_timm_models_keep_their_weights_and_attack_gradients(arch):
    torch.manual_seed(0)
    backbone = timm.create_model(arch, num_classes=5)
    reference = wrap(copy.deepcopy(backbone)).eval()  # wrap() switches the stem
    assert use_default_input_grad(reference) >= 1  # ... so switch it back: this is PyTorch's default
    model = wrap(backbone).eval()
    assert any(type(m) is InputGradConv2d for m in model.modules())
    state, ref_state = model.state_dict(), reference.state_dict()
    assert list(state) == list(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in state)
    x = torch.rand(4, *model.input_size)
    y = torch.arange(4) % 5
    delta = torch.zeros_like(x)
    g_fast, logits_fast = attacks.input_gradient(model, x, delta, y)
    g_ref, logits_ref = attacks.input_gradient(reference, x, delta, y)
    assert torch.equal(logits_fast, logits_ref)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())
    # the loss goes up along the fast gradient's sign exactly as along the default one's
    step = 0.01
    loss = [F.cross_entropy(m(x + step * g.sign()), y).item() for m, g in ((model, g_fast), (reference, g_ref))]
    assert loss[0] == pytest.approx(loss[1], rel=1e-3)
