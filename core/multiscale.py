"""The multiscale backbone: a SaShiMi-shaped U-Net of Mamba stages (Goel et al., 2022).

Dimension names: B batch, L length, D d_model; level i has width D_i = D * G^i (G the
``width_growth``, SaShiMi's "expand") and length L_i = L / (pool[0] * ... * pool[i-1]).

    level 0:  x -> stage_0 ------------------------------(+)-> up_stage_0 -> y
                     | down_0                              ^ up_0
    level 1:         v -> stage_1 ---------------(+)-> up_stage_1
                            | down_1               ^ up_1
    level 2:                v -> center -----------+

Each stage is a residual pre-norm stack of Mamba blocks (``MambaBackbone`` when causal,
``BiMambaBackbone`` otherwise); the skip adds a level's down-stage output to what comes back
up to it.

Pooling protocol. A pooling is a callable ``pooling(d_model, factor, width_growth) ->
(down, up)`` returning two ``nn.Module``:

    down(x)  (B, L, D)             -> (B, L / factor, D * G)   whole sequence
    up(y)    (B, L / factor, D * G) -> (B, L, D)
    down.causal, up.causal (bool): True if output step t reads no input after t
        (for ``up``: no pooled step whose window ends after t). A causal backbone needs both.
A causal ``up`` reads, for output window k, the pooled step k-1 only (SaShiMi's one-window
shift). A causal pair also carries state, with the conventions of the stages:
    cache = m.allocate_cache(batch_size, device=None, dtype=None)    an InferenceCache
    down.step(x_t (B, D), cache) -> (B, D * G) on every factor-th call, else None
        (it buffers the samples of the current window)
    up.step(y_t or None, cache) -> (B, D): the output for the current sample; y_t, the
        pooled step just completed (given on the calls where ``down`` emitted), is
        buffered for the next ``factor`` samples
    m(x, state=cache, return_state=True) -> (output, cache after): a chunk of whole
        windows that continues from ``cache`` (``up``: its first window is the one the
        previous chunk's last pooled step fills) and returns the cache ``step`` would leave
so that the pooled stages below advance only every factor-th sample, and a long sequence
runs chunk by chunk. Poolings are registered by name (``register_pooling``) so that a
config can name its pooling; ``"linear"`` (here, non-causal) is the default, and
``mamba_audio.pooling`` registers the causal, shifted SaShiMi pooling as ``"sashimi"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from .backbone import DEFAULT_CHUNK, MambaBackbone, MambaBackboneConfig
from .bimamba import BiMambaBackbone, BiMambaBackboneConfig
from .cache import InferenceCache
from .model_folder import PretrainedMixin, register_model_class

_POOLINGS = {}


def register_pooling(name, factory):
    """Make ``factory`` (see the pooling protocol above) available under ``name``; returns
    it."""
    _POOLINGS[name] = factory
    return factory


def get_pooling(name):
    """The pooling factory registered under ``name``; ValueError naming the known ones."""
    if name not in _POOLINGS:
        hint = " (import mambaseq.mamba_audio.pooling to register it)" if name == "sashimi" else ""
        raise ValueError(f"unknown pooling {name!r}{hint}; registered: {sorted(_POOLINGS)}")
    return _POOLINGS[name]


class LinearDownPool(nn.Module):
    """Non-causal-safe pooling: each window of ``factor`` steps, concatenated, -> Linear."""

    causal = True

    def __init__(self, d_model, factor, width_growth, device=None, dtype=None):
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(d_model * factor, d_model * width_growth, device=device,
                                dtype=dtype)

    def forward(self, x):
        """(B, L, D) -> (B, L / factor, D * G)."""
        batch, length, d = x.shape
        return self.linear(x.reshape(batch, length // self.factor, self.factor * d))


class LinearUpPool(nn.Module):
    """Linear -> ``factor`` steps per pooled step, unshifted: step t reads the pooled window
    that contains it, i.e. up to ``factor - 1`` future steps (not causal, no ``step``)."""

    causal = False

    def __init__(self, d_model, factor, width_growth, device=None, dtype=None):
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(d_model * width_growth, d_model * factor, device=device,
                                dtype=dtype)

    def forward(self, y):
        """(B, L / factor, D * G) -> (B, L, D)."""
        batch, length, _ = y.shape
        return self.linear(y).reshape(batch, length * self.factor, -1)


def linear_pooling(d_model, factor, width_growth):
    """The default (non-causal) pooling: ``(LinearDownPool, LinearUpPool)``."""
    return (LinearDownPool(d_model, factor, width_growth),
            LinearUpPool(d_model, factor, width_growth))


register_pooling("linear", linear_pooling)


@dataclass(kw_only=True)
class MultiscaleBackboneConfig:
    """Architecture of a ``MultiscaleBackbone`` (what its config.json holds)."""
    d_model: int                                   # D at the finest level
    pool: list = field(default_factory=lambda: [4, 4])  # pooling factor of each level
    width_growth: int = 2                          # G: D_{i+1} = G * D_i (SaShiMi's expand)
    n_layers_per_stage: int = 2                    # Mamba blocks in each stage
    causal: bool = False                           # Mamba (causal) or BiMamba stages
    pooling: str = "linear"                        # registered pooling name
    d_state: int = 16                              # N
    d_conv: int = 4                                # K
    mamba_expand: int = 2                          # E = mamba_expand * D_i in each block
    norm_eps: float = 1e-5
    chunk_size: int = DEFAULT_CHUNK

    # config.json files written before the rename call the width growth "expand" (the
    # name the Mamba block's inner width factor keeps)
    renamed_fields: ClassVar[dict] = {"expand": "width_growth"}

    def __post_init__(self):
        self.pool = [int(p) for p in self.pool]


@register_model_class
class MultiscaleBackbone(PretrainedMixin, nn.Module):
    """SaShiMi-shaped U-Net of Mamba stages: (B, L, D) -> (B, L, D).

    Args:
        config (MultiscaleBackboneConfig):
            d_model (D); pool ([4, 4]): the pooling factor of each level; width_growth (2):
            each level is this many times wider than the one above; n_layers_per_stage (2):
            Mamba blocks per stage (down, center and up); causal (False): causal Mamba
            stages, which need a causal pooling; pooling ("linear"): a registered pooling
            name (see the protocol in this module's docstring); d_state, d_conv,
            mamba_expand (the blocks' ``expand``), norm_eps, chunk_size: of the stages.
        device, dtype (optional): where and in what dtype the parameters are made.

    L need not be a multiple of prod(pool): the input is zero-padded at the end and the
    output cropped (harmless when causal; when not, the padding is part of the context).

    >>> import mambaseq.mamba_audio.pooling  # registers "sashimi"
    >>> bb = MultiscaleBackbone(MultiscaleBackboneConfig(d_model=16, pool=[4, 4], causal=True,
    ...                                                  pooling="sashimi"))
    >>> x = torch.randn(2, 50, 16)                        # 50: not a multiple of 4 * 4
    >>> y = bb(x); y.shape
    torch.Size([2, 50, 16])
    >>> cache = bb.allocate_cache(2)
    >>> y_steps = torch.stack([bb.step(x[:, t], cache) for t in range(50)], 1)   # (2, 50, 16)
    >>> torch.allclose(y_steps, y, atol=1e-4)             # one sample at a time, same output
    True
    """

    config_class = MultiscaleBackboneConfig

    def __init__(self, config: MultiscaleBackboneConfig, *, device=None, dtype=None):
        super().__init__(config)
        factory = get_pooling(config.pooling)
        self.pool, self.causal = config.pool, config.causal
        self.total_pool = math.prod(config.pool)
        stage_cls, stage_config = ((MambaBackbone, MambaBackboneConfig) if config.causal
                                   else (BiMambaBackbone, BiMambaBackboneConfig))

        def stage(width):
            return stage_cls(stage_config(
                d_model=width, n_layer=config.n_layers_per_stage, d_state=config.d_state,
                d_conv=config.d_conv, expand=config.mamba_expand, norm_eps=config.norm_eps,
                chunk_size=config.chunk_size), device=device, dtype=dtype)

        widths = [config.d_model * config.width_growth ** i
                  for i in range(len(config.pool) + 1)]                   # D_i
        self.down_stages = nn.ModuleList(stage(w) for w in widths[:-1])
        self.center = stage(widths[-1])
        self.up_stages = nn.ModuleList(stage(w) for w in widths[:-1])
        self.down_pools, self.up_pools = nn.ModuleList(), nn.ModuleList()
        for width, factor in zip(widths, config.pool):
            down, up = factory(width, factor, config.width_growth)
            if config.causal and not (getattr(down, "causal", False)
                                      and getattr(up, "causal", False)):
                raise ValueError(f"pooling {config.pooling!r} is not causal; a causal "
                                 "MultiscaleBackbone needs a causal pooling, e.g. "
                                 "pooling='sashimi' after `import mambaseq.mamba_audio.pooling`")
            self.down_pools.append(down.to(device=device, dtype=dtype))
            self.up_pools.append(up.to(device=device, dtype=dtype))

    def forward(self, x, state=None, return_state=False):
        """x (B, L, D) -> y (B, L, D).

        Causal backbones can also run a long sequence chunk by chunk: with ``state`` (the
        ``InferenceCache`` of the previous chunk, or one ``step`` left after a multiple of
        ``total_pool`` samples) the sequence continues from it, and ``return_state=True``
        also returns the state after this chunk (a cache ``step`` continues from), whose L
        must then be a multiple of ``total_pool`` (no pooling window may straddle two
        chunks).
        """
        stream = state is not None or return_state
        if stream and not self.causal:
            raise RuntimeError("state passing needs causal=True (a bidirectional stage "
                               "reads the whole chunk)")
        if return_state and x.shape[1] % self.total_pool:
            raise ValueError(f"a chunk that passes its state on must be a multiple of "
                             f"{self.total_pool} steps, got {x.shape[1]}")
        length = x.shape[1]
        pad = -length % self.total_pool
        if pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, x.shape[2])], 1)
        levels = len(self.pool)
        if stream and state is None:
            state = self.allocate_cache(x.shape[0], device=x.device)
        new = InferenceCache(down_stages=[None] * levels, down_pools=[None] * levels,
                             center=None, up_pools=[None] * levels, up_stages=[None] * levels)

        def run(module, h, name, i=None):
            """``module(h)``; streaming, from and into the ``name`` (``[i]``) part of the
            states."""
            if not stream:
                return module(h)
            old = getattr(state, name) if i is None else getattr(state, name)[i]
            h, after = module(h, state=old, return_state=True)
            if i is None:
                setattr(new, name, after)
            else:
                getattr(new, name)[i] = after
            return h

        h, skips = x, []
        for i in range(levels):
            h = run(self.down_stages[i], h, "down_stages", i)                # (B, L_i, D_i)
            skips.append(h)
            h = run(self.down_pools[i], h, "down_pools", i)                 # (B, L_i+1, D_i+1)
        h = run(self.center, h, "center")
        for i in reversed(range(levels)):
            u = run(self.up_pools[i], h, "up_pools", i)                     # (B, L_i, D_i)
            h = run(self.up_stages[i], u + skips[i], "up_stages", i)
        return (h[:, :length], new) if return_state else h[:, :length]

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero recurrent state for ``step`` (causal backbones only): an ``InferenceCache``
        with the caches of ``down_stages``, ``down_pools``, ``center``, ``up_pools`` and
        ``up_stages`` (lists per level, as the modules)."""
        if not self.causal:
            raise RuntimeError("step needs causal=True (a bidirectional stage cannot step)")
        kw = {"device": device, "dtype": dtype}
        return InferenceCache(
            down_stages=[s.allocate_cache(batch_size, **kw) for s in self.down_stages],
            down_pools=[p.allocate_cache(batch_size, **kw) for p in self.down_pools],
            center=self.center.allocate_cache(batch_size, **kw),
            up_pools=[p.allocate_cache(batch_size, **kw) for p in self.up_pools],
            up_stages=[s.allocate_cache(batch_size, **kw) for s in self.up_stages])

    def step(self, x_t, cache):
        """One sample: x_t (B, D) -> y_t (B, D). Level i advances only on the samples where
        the pooling above it completes a window (every pool[0]*...*pool[i-1] samples)."""
        h, skips, depth = x_t, [], len(self.pool)
        for i, (stage, down) in enumerate(zip(self.down_stages, self.down_pools)):
            h = stage.step(h, cache.down_stages[i])
            skips.append(h)
            h = down.step(h, cache.down_pools[i])
            if h is None:                 # window not complete: deeper levels wait
                depth = i
                break
        y = self.center.step(h, cache.center) if depth == len(self.pool) else None
        for i in reversed(range(min(depth, len(self.pool) - 1) + 1)):
            u = self.up_pools[i].step(y, cache.up_pools[i])
            y = self.up_stages[i].step(u + skips[i], cache.up_stages[i])
        return y
