"""Genomics task heads built from ``core`` parts.

Dimension names: B batch, L length, D d_model, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn
import torch.nn.functional as F

from mambaseq.core import BiMambaBackbone, TokenModelConfig, token_embedding
from mambaseq.core.pretrained import PretrainedMixin


@dataclass
class MaskedLMConfig(TokenModelConfig):
    rc_equivariant: bool = False      # Caduceus-PS: RC-equivariant embedding, backbone, head
    complement: Optional[list] = None  # token id -> complement id (rc_equivariant only)


class MaskedLM(PretrainedMixin, nn.Module):
    """Masked language model over bases (Caduceus-style MLM pretraining): embedding ->
    bidirectional ``BiMambaBackbone`` -> tied output head. Its ``embedding`` and
    ``backbone`` load into a bidirectional ``core.SequenceClassifier``.

    With ``rc_equivariant`` (and the tokenizer's ``complement`` map) the embedding, backbone
    and head are Caduceus-PS's reverse-complement equivariant ones: the logits of the
    reverse complement of a sequence are its logits reversed, each base's score moved to its
    complement's; such a model initialises an ``rc_equivariant`` classifier.

    >>> mlm = MaskedLM(vocab_size=9, d_model=128, n_layer=4)
    >>> logits = mlm(ids)                                           # (B, L, V)
    """

    config_class = MaskedLMConfig

    def __init__(self, vocab_size, d_model, n_layer, d_state=16, d_conv=4, expand=2,
                 norm_eps=1e-5, rc_equivariant=False, complement=None, device=None,
                 dtype=None):
        super().__init__()
        if rc_equivariant and complement is None:
            raise ValueError("rc_equivariant needs the token complement map `complement`")
        complement = None if complement is None else [int(c) for c in complement]
        self.config = MaskedLMConfig(vocab_size, d_model, n_layer, d_state, d_conv, expand,
                                     norm_eps, rc_equivariant, complement)
        factory = {"device": device, "dtype": dtype}
        self.embedding = token_embedding(vocab_size, d_model,
                                         complement if rc_equivariant else None, **factory)
        self.backbone = BiMambaBackbone(d_model, n_layer, d_state, d_conv, expand, norm_eps,
                                        rc_equivariant=rc_equivariant, **factory)

    def forward(self, ids, mask=None):
        """ids (B, L) -> logits (B, L, V) fp32; ``mask`` (B, L) True on real steps."""
        h = self.backbone(self.embedding(ids), mask=mask)                 # (B, L, D)
        if self.config.rc_equivariant:
            return self.embedding.unembed(h).float()
        return F.linear(h, self.embedding.weight).float()
