"""SaShiMi's causal pooling (Goel et al., 2022, "It's Raw! Audio Generation with State-Space
Models"), for ``core.MultiscaleBackbone``, with the recurrent state it needs.

Dimension names: B batch, L length, D width above the pooling, p the factor, G the width
growth (the pooled width is D * G).

Down: each window of p samples [kp, kp+p) is concatenated and projected to one pooled step
k (width D * G); it reads nothing after sample kp+p-1, and is emitted by ``step`` on
that sample. Up: pooled step k is projected back to p samples and *shifted by one window*,
to samples [(k+1)p, (k+2)p), all after the last sample k read; the first window gets
zeros. That one-window shift is what keeps the whole U-Net autoregressive.

The state of each (``allocate_cache``, a ``core.InferenceCache``): ``buf`` (B, p, D) and
``pos``, the index of the next sample in the window. Down buffers the samples of the current
window; up holds the window of outputs that the last pooled step fills.

Importing this module registers the pair as pooling "sashimi":

>>> from mambaseq import core
>>> import mambaseq.mamba_audio.pooling
>>> bb = core.MultiscaleBackbone(core.MultiscaleBackboneConfig(
...     d_model=16, pool=[4, 4], causal=True, pooling="sashimi"))
>>> x = torch.randn(1, 32, 16)
>>> y = bb(x); y.shape
torch.Size([1, 32, 16])
>>> later = x.clone(); later[:, 20:] += 1.0             # change the input from sample 20 on
>>> torch.allclose(bb(later)[:, :20], y[:, :20], atol=1e-6)   # outputs before it do not move
True
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mambaseq.core.cache import InferenceCache
from mambaseq.core.multiscale import register_pooling


class _WindowPool(nn.Module):
    """What both directions share: a Linear, and a (B, p, D) window as state."""

    causal = True

    def __init__(self, d_model, factor, in_features, out_features, device=None, dtype=None):
        super().__init__()
        self.d_model, self.factor = d_model, factor
        self.linear = nn.Linear(in_features, out_features, device=device, dtype=dtype)

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero state: ``InferenceCache(buf (B, p, D), pos=0)``."""
        w = self.linear.weight
        return InferenceCache(buf=torch.zeros(batch_size, self.factor, self.d_model,
                                              device=device or w.device, dtype=dtype or w.dtype),
                              pos=0)

    def _check_boundary(self, state):
        if state is not None and state.pos != 0:
            raise ValueError(f"{type(self).__name__}: a chunk must start on a window boundary "
                             f"(the state is {state.pos} samples into a window of "
                             f"{self.factor})")


class CausalDownPool(_WindowPool):
    """(B, L, D) -> (B, L/p, D*G): each window of p samples -> Linear."""

    def __init__(self, d_model, factor, width_growth, device=None, dtype=None):
        super().__init__(d_model, factor, d_model * factor, d_model * width_growth,
                         device=device, dtype=dtype)

    def forward(self, x, state=None, return_state=False):
        """x (B, L, D) -> (B, L/p, D*G); L a multiple of p. ``state``/``return_state``: as
        the stages' (nothing is buffered between chunks of whole windows)."""
        batch, length, d = x.shape
        if length % self.factor:
            raise ValueError(f"CausalDownPool: length {length} is not a multiple of "
                             f"{self.factor}")
        self._check_boundary(state)
        y = self.linear(x.reshape(batch, length // self.factor, self.factor * d))
        return (y, self.allocate_cache(batch)) if return_state else y

    def step(self, x_t, cache):
        """x_t (B, D) -> the pooled step (B, D*G) when the window completes, else None."""
        cache.buf[:, cache.pos] = x_t
        cache.pos += 1
        if cache.pos < self.factor:
            return None
        cache.pos = 0
        return self.linear(cache.buf.reshape(x_t.shape[0], -1))


class CausalUpPool(_WindowPool):
    """(B, L/p, D*G) -> (B, L, D): Linear to p samples per pooled step, shifted right
    by one window (p samples) so that no output reads a window that is not yet complete."""

    def __init__(self, d_model, factor, width_growth, device=None, dtype=None):
        super().__init__(d_model, factor, d_model * width_growth, d_model * factor,
                         device=device, dtype=dtype)

    def forward(self, y, state=None, return_state=False):
        """y (B, L/p, D*G) -> (B, L, D). The first window is zeros, or with ``state`` the
        window of the previous chunk's last pooled step; ``return_state`` also returns the
        state holding this chunk's last one (what ``step`` would hold)."""
        batch, length, _ = y.shape
        self._check_boundary(state)
        z = self.linear(y).reshape(batch, length * self.factor, self.d_model)   # (B, L, D)
        first = z.new_zeros(batch, self.factor, self.d_model) if state is None else state.buf
        out = torch.cat([first, z[:, :-self.factor]], 1)
        if return_state:
            return out, InferenceCache(buf=z[:, -self.factor:], pos=0)
        return out

    def step(self, y_t, cache):
        """Output (B, D) for the current sample; ``y_t`` (B, D*G), the pooled step that
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


def sashimi_pooling(d_model, factor, width_growth):
    """Pooling factory for ``core.MultiscaleBackbone``: ``(CausalDownPool, CausalUpPool)``."""
    return (CausalDownPool(d_model, factor, width_growth),
            CausalUpPool(d_model, factor, width_growth))


register_pooling("sashimi", sashimi_pooling)
