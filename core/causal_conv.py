"""The Mamba block's causal depthwise convolution on the CPU as K shifted multiply-adds.

Dimension names: B batch, E channels, K kernel width, L length.

oneDNN's depthwise conv1d backward took 8-20 ms at (B 8, E 128, L 1024, K 4) on one CPU
thread (its forward 1-9 ms), more than the scan's backward of the same layer; K passes of
elementwise multiply-adds over the sequence take ~1 ms forward and ~5 ms backward.
"""
from __future__ import annotations

import torch


class _CausalDepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_padded, weight, bias):
        width = weight.shape[-1]
        length = x_padded.shape[-1] - width + 1
        taps = weight[:, 0, :]                                           # (E, K)
        out = (torch.mul(x_padded[..., :length], taps[:, :1]) if bias is None else
               torch.addcmul(bias.unsqueeze(-1), x_padded[..., :length], taps[:, :1]))
        for k in range(1, width):
            out.addcmul_(x_padded[..., k:k + length], taps[:, k:k + 1])
        ctx.save_for_backward(x_padded, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x_padded, weight = ctx.saved_tensors
        width = weight.shape[-1]
        length = grad.shape[-1]
        taps = weight[:, 0, :]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.new_zeros(x_padded.shape)
            for k in range(width):
                grad_x[..., k:k + length].addcmul_(grad, taps[:, k:k + 1])
        if ctx.needs_input_grad[1]:
            grad_w = torch.stack([(grad * x_padded[..., k:k + length]).sum((0, 2))
                                  for k in range(width)], -1).unsqueeze(1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2))
        return grad_x, grad_w, grad_b


def causal_depthwise_conv(x_padded, weight, bias=None):
    """``F.conv1d(x_padded, weight, bias, groups=E)`` for a depthwise kernel: x_padded
    (B, E, K-1+L), weight (E, 1, K), bias (E,) or None -> (B, E, L). Weight and bias are
    cast to x_padded's dtype, as conv1d's autocast does."""
    if bias is not None:
        bias = bias.to(x_padded.dtype)
    return _CausalDepthwiseConv.apply(x_padded, weight.to(x_padded.dtype), bias)
