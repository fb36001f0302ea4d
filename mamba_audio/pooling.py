"""SaShiMi's causal pooling (Goel et al., 2022, "It's Raw! Audio Generation with State-Space
Models"), for ``core.MultiscaleBackbone``, with the recurrent ``step`` it needs.

Dimension names: B batch, L length, D width above the pooling, p the factor.

Down: each window of p samples [kp, kp+p) is concatenated and projected to one pooled step
k (width D * expand); it reads nothing after sample kp+p-1, and is emitted by ``step`` on
that sample. Up: pooled step k is projected back to p samples and *shifted by one window*,
to samples [(k+1)p, (k+2)p), all after the last sample k read; the first window gets
zeros. That one-window shift is what keeps the whole U-Net autoregressive.

Importing this module registers the pair as pooling "sashimi":

>>> import mambaseq.mamba_audio.pooling
>>> bb = core.MultiscaleBackbone(64, pool=(4, 4), causal=True, pooling="sashimi")
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from mambaseq.core.multiscale import register_pooling


@dataclass
class PoolCache:
    """Step state of a pooling: ``buf`` (B, p, D) samples of the current window, ``pos`` the
    index of the next one."""
    buf: torch.Tensor
    pos: int = 0


class CausalDownPool(nn.Module):
    """(B, L, D) -> (B, L/p, D*expand): each window of p samples -> Linear."""

    causal = True

    def __init__(self, d_model, factor, expand, device=None, dtype=None):
        super().__init__()
        self.d_model, self.factor = d_model, factor
        self.linear = nn.Linear(d_model * factor, d_model * expand, device=device, dtype=dtype)

    def forward(self, x):
        batch, length, d = x.shape
        if length % self.factor:
            raise ValueError(f"CausalDownPool: length {length} is not a multiple of "
                             f"{self.factor}")
        return self.linear(x.reshape(batch, length // self.factor, self.factor * d))

    def allocate_cache(self, batch_size, device=None, dtype=None):
        w = self.linear.weight
        return PoolCache(torch.zeros(batch_size, self.factor, self.d_model,
                                     device=device or w.device, dtype=dtype or w.dtype))

    def step(self, x_t, cache):
        """x_t (B, D) -> the pooled step (B, D*expand) when the window completes, else None."""
        cache.buf[:, cache.pos] = x_t
        cache.pos += 1
        if cache.pos < self.factor:
            return None
        cache.pos = 0
        return self.linear(cache.buf.reshape(x_t.shape[0], -1))


class CausalUpPool(nn.Module):
    """(B, L/p, D*expand) -> (B, L, D): Linear to p samples per pooled step, shifted right
    by one window (p samples) so that no output reads a window that is not yet complete."""

    causal = True

    def __init__(self, d_model, factor, expand, device=None, dtype=None):
        super().__init__()
        self.d_model, self.factor = d_model, factor
        self.linear = nn.Linear(d_model * expand, d_model * factor, device=device, dtype=dtype)

    def forward(self, y):
        batch, length, _ = y.shape
        z = self.linear(y).reshape(batch, length * self.factor, self.d_model)   # (B, L, D)
        return torch.cat([z.new_zeros(batch, self.factor, self.d_model),
                          z[:, :-self.factor]], 1)

    def allocate_cache(self, batch_size, device=None, dtype=None):
        w = self.linear.weight
        return PoolCache(torch.zeros(batch_size, self.factor, self.d_model,
                                     device=device or w.device, dtype=dtype or w.dtype))

    def step(self, y_t, cache):
        """Output (B, D) for the current sample; ``y_t`` (B, D*expand), the pooled step that
        completed on this sample (None on the others), fills the next p outputs."""
        if cache.pos >= self.factor:
            raise RuntimeError("CausalUpPool.step: window exhausted without a new pooled step; "
                               "call it once per sample, with the pooled step every p-th")
        out = cache.buf[:, cache.pos].clone()
        cache.pos += 1
        if y_t is not None:
            if cache.pos != self.factor:
                raise RuntimeError("CausalUpPool.step: pooled step arrived mid-window")
            cache.buf = self.linear(y_t).reshape(y_t.shape[0], self.factor, self.d_model)
            cache.pos = 0
        return out


def sashimi_pooling(d_model, factor, expand):
    """Pooling factory for ``core.MultiscaleBackbone``: ``(CausalDownPool, CausalUpPool)``."""
    return CausalDownPool(d_model, factor, expand), CausalUpPool(d_model, factor, expand)


register_pooling("sashimi", sashimi_pooling)
