"""RMSNorm (Zhang & Sennrich, 2019), the norm of every Mamba backbone.

Dimension names: D d_model.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dim, computed in fp32.

    Args:
        d_model (int): D, the normalised width.
        eps (float, 1e-5): added to the mean square.

    The result has the input's dtype; the backbones feed it an fp32 residual and cast.

    >>> RMSNorm(64)(torch.randn(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(self, d_model, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)
