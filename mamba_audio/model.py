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
(D = 64, pool (4, 4), width growth 2, 8 blocks per stage: about 6.2M parameters); "small" (0.5M)
trains on a CPU in minutes; "tiny" is for tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from mambaseq.core.cache import InferenceCache
from mambaseq.core.config import sub_config
from mambaseq.core.model_folder import PretrainedMixin, register_model_class
from mambaseq.core.multiscale import MultiscaleBackbone, MultiscaleBackboneConfig

from . import pooling  # noqa: F401  (registers the "sashimi" pooling in core)
from .metrics import nll_bits
from .quantize import Quantizer


@dataclass(kw_only=True)
class AudioLMConfig:
    """Architecture and quantiser of an ``AudioLM`` (what its config.json holds)."""
    d_model: int = 64                                   # D at the sample level
    pool: list = field(default_factory=lambda: [4, 4])  # pooling factor of each level
    width_growth: int = 2                               # G: D_{i+1} = G * D_i
    n_layers_per_stage: int = 8                         # Mamba blocks per U-Net stage
    d_state: int = 16                                   # N
    d_conv: int = 4                                     # K
    mamba_expand: int = 2                               # E = mamba_expand * D_i
    quantizer: str = "mu_law"                           # "mu_law" | "linear"
    bits: int = 8                                       # C = 2**bits classes
    sample_rate: int = 16000                            # Hz the model was trained at

    # config.json files written before the rename call the width growth "expand"
    renamed_fields: ClassVar[dict] = {"expand": "width_growth"}

    def __post_init__(self):
        self.pool = [int(p) for p in self.pool]


PRESETS = {
    "paper": dict(d_model=64, n_layers_per_stage=8),
    "small": dict(d_model=32, n_layers_per_stage=2),
    "tiny": dict(d_model=16, n_layers_per_stage=1, d_state=8),
}


@register_model_class
class AudioLM(PretrainedMixin, nn.Module):
    """Autoregressive model of quantised audio samples.

    Args:
        config (AudioLMConfig): see there.
        device, dtype (optional): where and in what dtype the parameters are made.

    >>> model = AudioLM.from_preset("small", sample_rate=8000)
    >>> tokens = model.quantizer.encode(torch.rand(2, 64) * 2 - 1)   # (B, L) classes
    >>> logits = model(tokens); logits.shape                         # (B, L, 256)
    torch.Size([2, 64, 256])
    >>> cache = model.allocate_cache(2); logits_t = model.step(tokens[:, 0], cache)
    >>> logits_t.shape, torch.allclose(logits_t, logits[:, 0], atol=1e-4)
    (torch.Size([2, 256]), True)
    """

    config_class = AudioLMConfig

    def __init__(self, config: AudioLMConfig, *, device=None, dtype=None):
        super().__init__(config)
        self.quantizer = Quantizer(config.quantizer, config.bits)
        factory = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(self.quantizer.n_classes, config.d_model, **factory)
        self.backbone = MultiscaleBackbone(
            sub_config(MultiscaleBackboneConfig, config, causal=True, pooling="sashimi"),
            **factory)
        self.head = nn.Linear(config.d_model, self.quantizer.n_classes, **factory)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AudioLM":
        """``AudioLM(AudioLMConfig(**PRESETS[name], **overrides))``, e.g.
        ``from_preset("paper", sample_rate=8000)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(AudioLMConfig(**{**PRESETS[name], **overrides}))

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def total_pool(self) -> int:
        """P: a chunk that passes its state on must be a multiple of this many samples."""
        return self.backbone.total_pool

    def forward(self, tokens, state: InferenceCache | None = None, return_state: bool = False):
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
        """Zero recurrent state for ``step``: the backbone's ``InferenceCache`` (fixed size,
        whatever the length generated)."""
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

