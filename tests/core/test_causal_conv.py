"""core.causal_conv: the CPU depthwise causal convolution equals F.conv1d, with gradients."""
import pytest
import torch
import torch.nn.functional as F

from mambaseq.core.causal_conv import causal_depthwise_conv


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width", [1, 4])
def test_equals_conv1d_with_gradients(bias, width):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, width - 1 + 17, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 1, width, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    leaves = [x, w] + ([b] if bias else [])
    dy = torch.randn(3, 5, 17, generator=g, dtype=torch.float64)
    ours = causal_depthwise_conv(x, w, b)
    grads = torch.autograd.grad(ours, leaves, dy)
    ref = F.conv1d(x, w, b, groups=5)
    ref_grads = torch.autograd.grad(ref, leaves, dy)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: causal_depthwise_conv(*a), tuple(leaves))


def test_strided_input_and_fp32_weights_on_bf16_input():
    x = torch.randn(2, 9, 6).transpose(1, 2)                  # (2, 6, 9), stride 1 along E
    w, b = torch.randn(6, 1, 4), torch.randn(6)
    torch.testing.assert_close(causal_depthwise_conv(x, w, b), F.conv1d(x, w, b, groups=6))
    out = causal_depthwise_conv(x.bfloat16(), w, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.conv1d(x, w, b, groups=6), rtol=0.05, atol=0.1)
