"""Genomics task heads built from ``core`` parts.

Dimension names: B batch, L length, D d_model, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn
import torch.nn.functional as F

from mambaseq.core import (BiMambaBackbone, BiMambaBackboneConfig, TokenModelConfig,
                           sub_config, token_embedding)
from mambaseq.core.model_folder import PretrainedMixin, register_model_class


@dataclass(kw_only=True)
class MaskedLMConfig(TokenModelConfig):
    """Architecture of a ``MaskedLM`` (what its config.json holds)."""
    rc_equivariant: bool = False      # Caduceus-PS: RC-equivariant embedding, backbone, head
    complement: Optional[list] = None  # token id -> complement id (rc_equivariant only)

    def __post_init__(self):
        if self.rc_equivariant and self.complement is None:
            raise ValueError("rc_equivariant needs the token complement map `complement`")
        if self.complement is not None:
            self.complement = [int(c) for c in self.complement]


@register_model_class
class MaskedLM(PretrainedMixin, nn.Module):
    """Masked language model over bases (Caduceus-style MLM pretraining): embedding ->
    bidirectional ``BiMambaBackbone`` -> tied output head. Its ``embedding`` and
    ``backbone`` load into a bidirectional ``core.SequenceClassifier``.

    With ``rc_equivariant`` (and the tokenizer's ``complement`` map) the embedding, backbone
    and head are Caduceus-PS's reverse-complement equivariant ones: the logits of the
    reverse complement of a sequence are its logits reversed, each base's score moved to its
    complement's; such a model initialises an ``rc_equivariant`` classifier.

    Args:
        config (MaskedLMConfig): vocab_size (V), d_model (D), n_layer, d_state, d_conv,
            expand, norm_eps; rc_equivariant and the token ``complement`` map.
        device, dtype (optional): where and in what dtype the parameters are made.

    >>> mlm = MaskedLM(MaskedLMConfig(vocab_size=9, d_model=32, n_layer=2))
    >>> import torch
    >>> ids = torch.randint(4, 8, (2, 50))                          # A C G T
    >>> mlm(ids).shape                                              # (B, L, V)
    torch.Size([2, 50, 9])
    """

    config_class = MaskedLMConfig

    def __init__(self, config: MaskedLMConfig, *, device=None, dtype=None):
        super().__init__(config)
        factory = {"device": device, "dtype": dtype}
        self.embedding = token_embedding(config.vocab_size, config.d_model,
                                         config.complement if config.rc_equivariant else None,
                                         **factory)
        self.backbone = BiMambaBackbone(sub_config(BiMambaBackboneConfig, config), **factory)

    def forward(self, ids, mask=None):
        """ids (B, L) -> logits (B, L, V) fp32; ``mask`` (B, L) True on real steps."""
        h = self.backbone(self.embedding(ids), mask=mask)                 # (B, L, D)
        if self.config.rc_equivariant:
            return self.embedding.unembed(h).float()
        return F.linear(h, self.embedding.weight).float()
