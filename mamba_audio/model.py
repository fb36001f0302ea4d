"""The audio language model: mu-law classes -> causal SaShiMi U-Net of Mamba stages -> classes.

Dimension names: B batch, L length (samples), C classes (2**bits), D d_model (the width at
the sample level), P = prod(pool) (samples per step of the coarsest level).

    tokens (B, L) -> Embedding(C, D) -> core.MultiscaleBackbone(causal, "sashimi" pooling)
                  -> Linear(D, C) -> logits (B, L, C), logits[:, t] predicting tokens[:, t + 1]

Three ways to run it, which agree to float tolerance (tests check it):
- ``forward(tokens)``: the whole clip at once (training).
- ``forward(tokens, state=..., return_state=True)``: chunk by chunk, each chunk starting
  from the previous one's state, so that scoring a million samples holds one chunk's
  activations (``stream_nll_bits``).
- ``step(token, cache)``: one sample, O(1) time and memory (generation).

Presets (``AudioLM.from_preset``): "paper" is the Mamba paper's SC09 SaShiMi-Mamba size
(D = 64, pool (4, 4), expand 2, 8 blocks per stage: about 6.2M parameters); "small" (0.5M)
trains on a CPU in minutes; "tiny" is for tests.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from mambaseq.core import MambaState
from mambaseq.core.multiscale import MultiscaleBackbone, MultiscaleState
from mambaseq.core.pretrained import PretrainedMixin

from . import pooling  # noqa: F401  (registers the "sashimi" pooling in core)
from .metrics import nll_bits
from .quantize import Quantizer


@dataclass
class AudioLMConfig:
    d_model: int = 64                                   # D at the sample level
    pool: list = field(default_factory=lambda: [4, 4])  # pooling factor of each level
    expand: int = 2                                     # width growth per level
    n_layers_per_stage: int = 8                         # Mamba blocks per U-Net stage
    d_state: int = 16                                   # N
    d_conv: int = 4                                     # K
    mamba_expand: int = 2                               # E = mamba_expand * D_i
    quantizer: str = "mu_law"                           # "mu_law" | "linear"
    bits: int = 8                                       # C = 2**bits classes
    sample_rate: int = 16000                            # Hz the model was trained at


PRESETS = {
    "paper": dict(d_model=64, n_layers_per_stage=8),
    "small": dict(d_model=32, n_layers_per_stage=2),
    "tiny": dict(d_model=16, n_layers_per_stage=1, d_state=8),
}


class AudioLM(PretrainedMixin, nn.Module):
    """Autoregressive model of quantised audio samples.

    Args: the fields of ``AudioLMConfig`` (see there), plus ``device``/``dtype``.

    >>> model = AudioLM.from_preset("small", sample_rate=8000)
    >>> logits = model(tokens)                                       # (B, L, 256)
    >>> cache = model.allocate_cache(2); logits_t = model.step(tokens[:, 0], cache)  # (2, 256)
    """

    config_class = AudioLMConfig

    def __init__(self, d_model=64, pool=(4, 4), expand=2, n_layers_per_stage=8, d_state=16,
                 d_conv=4, mamba_expand=2, quantizer="mu_law", bits=8, sample_rate=16000,
                 device=None, dtype=None):
        super().__init__()
        self.config = AudioLMConfig(d_model, [int(p) for p in pool], expand,
                                    n_layers_per_stage, d_state, d_conv, mamba_expand,
                                    quantizer, bits, sample_rate)
        self.quantizer = Quantizer(quantizer, bits)
        factory = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(self.quantizer.n_classes, d_model, **factory)
        self.backbone = MultiscaleBackbone(
            d_model, pool=pool, expand=expand, n_layers_per_stage=n_layers_per_stage,
            causal=True, pooling="sashimi", d_state=d_state, d_conv=d_conv,
            mamba_expand=mamba_expand, **factory)
        self.head = nn.Linear(d_model, self.quantizer.n_classes, **factory)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AudioLM":
        """``AudioLM(**PRESETS[name], **overrides)``, e.g. ``from_preset("paper",
        sample_rate=8000)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def total_pool(self) -> int:
        """P: a chunk that passes its state on must be a multiple of this many samples."""
        return self.backbone.total_pool

    def forward(self, tokens, state: MultiscaleState | None = None, return_state: bool = False):
        """tokens (B, L) int64 -> logits (B, L, C) fp32; logits[:, t] predicts tokens[:, t+1].

        With ``state`` the clip continues a previous chunk; with ``return_state`` the state
        after this chunk is returned too (then L must be a multiple of ``total_pool``, so
        that no pooling window straddles two chunks); see ``MultiscaleBackbone.forward``.
        """
        out = self.backbone(self.embedding(tokens), state=state, return_state=return_state)
        if return_state:
            return self.head(out[0]).float(), out[1]                      # (B, L, C), state
        return self.head(out).float()

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero recurrent state for ``step`` (fixed size, whatever the length generated)."""
        return self.backbone.allocate_cache(batch_size, device=device, dtype=dtype)

    def step(self, tokens_t, cache):
        """One sample per row: tokens_t (B,) -> logits (B, C) fp32 for the next sample;
        ``cache`` is updated in place."""
        return self.head(self.backbone.step(self.embedding(tokens_t), cache)).float()


def stream_nll_bits(model: AudioLM, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                    chunk_size: int = 2 ** 14) -> tuple[float, int]:
    """Negative log2-likelihood of clips under ``model``, scored chunk by chunk with state
    passing, so memory depends on ``chunk_size``, not on the clips' length.

    Every sample but the first of a clip is predicted from all the samples before it.

    Args:
        model (AudioLM): in eval mode.
        tokens (Tensor): (B, L) classes.
        mask (Tensor, optional): (B, L) bool, True on real samples (right-padded clips).
        chunk_size (int, 16384): samples per chunk, rounded down to a multiple of P.

    Returns:
        (total bits, number of samples scored: B * (L - 1) without a mask).
    """
    chunk = max(chunk_size // model.total_pool, 1) * model.total_pool
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    keep = None if mask is None else mask[:, 1:]
    state, bits, count = None, 0.0, 0
    with torch.no_grad():
        for start in range(0, inputs.shape[1], chunk):
            end = min(start + chunk, inputs.shape[1])
            if end < inputs.shape[1]:
                logits, state = model(inputs[:, start:end], state=state, return_state=True)
            else:
                logits = model(inputs[:, start:end], state=state)
            b, n = nll_bits(logits, targets[:, start:end],
                            None if keep is None else keep[:, start:end])
            bits, count = bits + b, count + n
    return bits, count


def state_numel(cache) -> int:
    """Number of elements held by a step cache or stream state (for memory checks)."""
    if isinstance(cache, torch.Tensor):
        return cache.numel()
    if isinstance(cache, MambaState):
        return cache.conv.numel() + cache.ssm.numel()
    if isinstance(cache, (list, tuple)):
        return sum(state_numel(c) for c in cache)
    if dataclasses.is_dataclass(cache):
        return sum(state_numel(getattr(cache, f.name)) for f in dataclasses.fields(cache))
    return 0
