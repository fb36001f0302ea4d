"""The multiscale backbone: a SaShiMi-shaped U-Net of Mamba stages (Goel et al., 2022).

Dimension names: B batch, L length, D d_model; level i has width D_i = D * expand^i and
length L_i = L / (pool[0] * ... * pool[i-1]).

    level 0:  x -> stage_0 ------------------------------(+)-> up_stage_0 -> y
                     | down_0                              ^ up_0
    level 1:         v -> stage_1 ---------------(+)-> up_stage_1
                            | down_1               ^ up_1
    level 2:                v -> center -----------+

Each stage is a residual pre-norm stack of Mamba blocks (``MambaBackbone`` when causal,
``BiMambaBackbone`` otherwise); the skip adds a level's down-stage output to what comes back
up to it.

Pooling protocol. A pooling is a callable ``pooling(d_model, factor, expand) ->
(down, up)`` returning two ``nn.Module``:

    down(x)  (B, L, D)             -> (B, L / factor, D * expand)   whole sequence
    up(y)    (B, L / factor, D*expand) -> (B, L, D)
    down.causal, up.causal (bool): True if output step t reads no input after t
        (for ``up``: no pooled step whose window ends after t). A causal backbone needs both.
A causal ``up`` must read, for output window k, the pooled step k-1 only (SaShiMi's
one-window shift): chunked ``forward`` with state passing relies on it.
For a causal backbone with ``step`` both also provide
    cache = m.allocate_cache(batch_size, device=None, dtype=None)
    down.step(x_t (B, D), cache) -> (B, D * expand) on every factor-th call, else None
        (it buffers the samples of the current window)
    up.step(y_t or None, cache) -> (B, D): the output for the current sample; y_t, the
        pooled step just completed (given on the calls where ``down`` emitted), is
        buffered for the next ``factor`` samples.
so that the pooled stages below advance only every factor-th sample. Poolings are
registered by name (``register_pooling``) so that a checkpoint can name its pooling;
``"linear"`` (here, non-causal) is the default, and ``mamba_audio.pooling`` registers the
causal, shifted SaShiMi pooling as ``"sashimi"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .backbone import DEFAULT_CHUNK, MambaBackbone
from .bimamba import BiMambaBackbone
from .pretrained import PretrainedMixin

_POOLINGS = {}


def register_pooling(name, factory):
    """Make ``factory`` (see the pooling protocol above) available under ``name``."""
    _POOLINGS[name] = factory
    return factory


def get_pooling(name):
    if name not in _POOLINGS:
        hint = " (import mambaseq.mamba_audio.pooling to register it)" if name == "sashimi" else ""
        raise ValueError(f"unknown pooling {name!r}{hint}; registered: {sorted(_POOLINGS)}")
    return _POOLINGS[name]


class LinearDownPool(nn.Module):
    """Non-causal-safe pooling: each window of ``factor`` steps, concatenated, -> Linear."""

    causal = True

    def __init__(self, d_model, factor, expand, device=None, dtype=None):
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(d_model * factor, d_model * expand, device=device, dtype=dtype)

    def forward(self, x):
        batch, length, d = x.shape
        return self.linear(x.reshape(batch, length // self.factor, self.factor * d))


class LinearUpPool(nn.Module):
    """Linear -> ``factor`` steps per pooled step, unshifted: step t reads the pooled window
    that contains it, i.e. up to ``factor - 1`` future steps (not causal, no ``step``)."""

    causal = False

    def __init__(self, d_model, factor, expand, device=None, dtype=None):
        super().__init__()
        self.factor = factor
        self.linear = nn.Linear(d_model * expand, d_model * factor, device=device, dtype=dtype)

    def forward(self, y):
        batch, length, _ = y.shape
        return self.linear(y).reshape(batch, length * self.factor, -1)


def linear_pooling(d_model, factor, expand):
    """The default (non-causal) pooling: ``(LinearDownPool, LinearUpPool)``."""
    return LinearDownPool(d_model, factor, expand), LinearUpPool(d_model, factor, expand)


register_pooling("linear", linear_pooling)


@dataclass
class MultiscaleBackboneConfig:
    d_model: int                                   # D at the finest level
    pool: list = field(default_factory=lambda: [4, 4])  # pooling factor of each level
    expand: int = 2                                # width growth per level (SaShiMi's expand)
    n_layers_per_stage: int = 2                    # Mamba blocks in each stage
    causal: bool = False                           # Mamba (causal) or BiMamba stages
    pooling: str = "linear"                        # registered pooling name
    d_state: int = 16                              # N
    d_conv: int = 4                                # K
    mamba_expand: int = 2                          # E = mamba_expand * D_i in each block
    norm_eps: float = 1e-5
    chunk_size: int = DEFAULT_CHUNK

    def check_saveable(self):
        if self.pooling not in _POOLINGS or self.pooling.startswith("<"):
            raise ValueError(f"pooling {self.pooling!r} is not registered under a name; "
                             "use register_pooling(name, factory) before saving")


@dataclass
class MultiscaleState:
    """What a causal ``MultiscaleBackbone.forward`` carries from one chunk to the next: the
    state (list of ``MambaState``) of every stage and, per level, the last pooled step that
    went into the up-pooling (its output lands on the first window of the next chunk)."""
    down_stages: list
    center: list
    up_stages: list
    up_carry: list          # level i: (B, 1, D_{i+1})

    @classmethod
    def empty(cls, levels):
        return cls([None] * levels, None, [None] * levels, [None] * levels)


@dataclass
class MultiscaleCache:
    """Recurrent state of a causal ``MultiscaleBackbone`` (see ``allocate_cache``)."""
    down_stages: list
    down_pools: list
    center: list
    up_pools: list
    up_stages: list


class MultiscaleBackbone(PretrainedMixin, nn.Module):
    """SaShiMi-shaped U-Net of Mamba stages: (B, L, D) -> (B, L, D).

    Args:
        d_model (int): D.
        pool (sequence of int, (4, 4)): pooling factor of each level.
        expand (int, 2): each level is ``expand`` times wider than the one above.
        n_layers_per_stage (int, 2): Mamba blocks per stage (down, center and up).
        causal (bool, False): causal Mamba stages; needs a causal pooling.
        pooling (str or callable, None): a registered name or a factory following the
            protocol in this module's docstring; None = "linear" (non-causal only).
        d_state, d_conv, mamba_expand, norm_eps, chunk_size: of the Mamba stages.

    L need not be a multiple of prod(pool): the input is zero-padded at the end and the
    output cropped (harmless when causal; when not, the padding is part of the context).

    >>> import mambaseq.mamba_audio.pooling  # registers "sashimi"
    >>> bb = MultiscaleBackbone(64, pool=(4, 4), causal=True, pooling="sashimi")
    >>> y = bb(torch.randn(1, 16000, 64))
    >>> cache = bb.allocate_cache(1); y_t = bb.step(x[:, 0], cache)
    """

    config_class = MultiscaleBackboneConfig

    def __init__(self, d_model, pool=(4, 4), expand=2, n_layers_per_stage=2, causal=False,
                 pooling=None, d_state=16, d_conv=4, mamba_expand=2, norm_eps=1e-5,
                 chunk_size=DEFAULT_CHUNK, device=None, dtype=None):
        super().__init__()
        if pooling is None:
            if causal:
                raise ValueError("a causal MultiscaleBackbone needs a causal pooling, e.g. "
                                 "pooling='sashimi' after `import mambaseq.mamba_audio.pooling`")
            pooling = "linear"
        if isinstance(pooling, str):
            name, factory = pooling, get_pooling(pooling)
        else:
            factory = pooling
            name = next((n for n, f in _POOLINGS.items() if f is factory),
                        f"<unregistered {getattr(factory, '__name__', factory)}>")
        pool = [int(p) for p in pool]
        self.config = MultiscaleBackboneConfig(d_model, pool, expand, n_layers_per_stage,
                                               causal, name, d_state, d_conv, mamba_expand,
                                               norm_eps, chunk_size)
        self.pool, self.causal = pool, causal
        self.total_pool = math.prod(pool)

        def stage(width):
            cls = MambaBackbone if causal else BiMambaBackbone
            return cls(width, n_layers_per_stage, d_state=d_state, d_conv=d_conv,
                       expand=mamba_expand, norm_eps=norm_eps, chunk_size=chunk_size,
                       device=device, dtype=dtype)

        widths = [d_model * expand ** i for i in range(len(pool) + 1)]   # D_i
        self.down_stages = nn.ModuleList(stage(w) for w in widths[:-1])
        self.center = stage(widths[-1])
        self.up_stages = nn.ModuleList(stage(w) for w in widths[:-1])
        self.down_pools, self.up_pools = nn.ModuleList(), nn.ModuleList()
        for width, factor in zip(widths, pool):
            down, up = factory(width, factor, expand)
            if causal and not (getattr(down, "causal", False) and getattr(up, "causal", False)):
                raise ValueError(f"pooling {name!r} is not causal; a causal "
                                 "MultiscaleBackbone needs a causal pooling")
            self.down_pools.append(down.to(device=device, dtype=dtype))
            self.up_pools.append(up.to(device=device, dtype=dtype))

    def forward(self, x, state=None, return_state=False):
        """x (B, L, D) -> y (B, L, D).

        Causal backbones can also run a long sequence chunk by chunk: with ``state`` (a
        ``MultiscaleState`` from the previous chunk) the sequence continues from it, and
        ``return_state=True`` also returns the state after this chunk, whose L must then be
        a multiple of ``total_pool`` (no pooling window may straddle two chunks).
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
        old = state or MultiscaleState.empty(levels)
        new = MultiscaleState.empty(levels)

        def run(stage, h, stage_state):
            return stage(h, state=stage_state, return_state=True) if stream else (stage(h), None)

        h, skips = x, []
        for i in range(levels):
            h, new.down_stages[i] = run(self.down_stages[i], h, old.down_stages[i])  # (B, L_i, D_i)
            skips.append(h)
            h = self.down_pools[i](h)                                     # (B, L_i+1, D_i+1)
        h, new.center = run(self.center, h, old.center)
        for i in reversed(range(levels)):
            new.up_carry[i] = h[:, -1:]
            if old.up_carry[i] is None:
                u = self.up_pools[i](h)                                   # (B, L_i, D_i)
            else:
                # A causal up-pooling's window k reads pooled step k-1 only: feeding the
                # previous chunk's last pooled step first and dropping its window gives this
                # chunk's outputs.
                u = self.up_pools[i](torch.cat([old.up_carry[i], h], 1))[:, self.pool[i]:]
            h, new.up_stages[i] = run(self.up_stages[i], u + skips[i], old.up_stages[i])
        return (h[:, :length], new) if return_state else h[:, :length]

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero recurrent state for ``step`` (causal backbones only)."""
        if not self.causal:
            raise RuntimeError("step needs causal=True (a bidirectional stage cannot step)")
        kw = {"device": device, "dtype": dtype}
        return MultiscaleCache(
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
