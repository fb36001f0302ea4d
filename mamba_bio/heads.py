"""Genomics task heads built from ``core`` parts.

Dimension names: B batch, L length, D d_model, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from core import BiMambaBackbone
from core.pretrained import PretrainedMixin


@dataclass
class MaskedLMConfig:
    vocab_size: int                   # V
    d_model: int                      # D
    n_layer: int
    d_state: int = 16                 # N
    d_conv: int = 4                   # K
    expand: int = 2                   # E = expand * D
    norm_eps: float = 1e-5


class MaskedLM(PretrainedMixin, nn.Module):
    """Masked language model over bases (Caduceus-style MLM pretraining): embedding ->
    bidirectional ``BiMambaBackbone`` -> tied output head. Its ``embedding`` and
    ``backbone`` load into a bidirectional ``core.SequenceClassifier``.

    >>> mlm = MaskedLM(vocab_size=9, d_model=128, n_layer=4)
    >>> logits = mlm(ids)                                           # (B, L, V)
    """

    config_class = MaskedLMConfig

    def __init__(self, vocab_size, d_model, n_layer, d_state=16, d_conv=4, expand=2,
                 norm_eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.config = MaskedLMConfig(vocab_size, d_model, n_layer, d_state, d_conv, expand,
                                     norm_eps)
        self.embedding = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.backbone = BiMambaBackbone(d_model, n_layer, d_state, d_conv, expand, norm_eps,
                                        device=device, dtype=dtype)

    def forward(self, ids, mask=None):
        """ids (B, L) -> logits (B, L, V) fp32; ``mask`` (B, L) True on real steps."""
        h = self.backbone(self.embedding(ids), mask=mask)                 # (B, L, D)
        return F.linear(h, self.embedding.weight).float()
