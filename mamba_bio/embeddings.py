"""Embeddings of long sequences in bounded memory.

Dimension names: L length, D d_model (F for an RC-symmetrised classifier's features).

A causal backbone (``core.MambaLM``, or a causal ``core.SequenceClassifier``) is run chunk
by chunk with its recurrent state passed on, so a 2^20-base record costs one chunk of
activations and is exactly the same as one whole pass. A bidirectional backbone needs the
whole sequence at once; ``BiMambaBackbone`` then bounds its own activations (it chunks
internally without gradients) and the hidden states are yielded in chunks all the same.
"""
from __future__ import annotations

import torch

from mambaseq.core import MambaBackbone


@torch.no_grad()
def hidden_chunks(model, ids: torch.Tensor, chunk_len: int = 2 ** 14):
    """Yield (start, h) with h (chunk, D) the final hidden states of positions
    [start, start + chunk) of one sequence ``ids`` (L,); chunks cover all of it in order.

    ``model``: a ``core.MambaLM``, ``core.SequenceClassifier`` or ``mamba_bio.MaskedLM``
    (anything with ``embedding`` and ``backbone``).
    """
    if isinstance(model.backbone, MambaBackbone):
        state = None
        for start in range(0, len(ids), chunk_len):
            x = model.embedding(ids[None, start:start + chunk_len])       # (1, chunk, D)
            h, state = model.backbone(x, state=state, return_state=True)
            yield start, h[0]
    else:
        h = model.backbone(model.embedding(ids[None]))[0]                 # (L, D)
        for start in range(0, len(ids), chunk_len):
            yield start, h[start:start + chunk_len]


def pooled_features(model, h: torch.Tensor) -> torch.Tensor:
    """Hidden states (..., D) -> the features a classifier pools, (..., F): RC-symmetrised
    for an RC-equivariant ``SequenceClassifier``, unchanged otherwise."""
    features = getattr(model, "features", None)
    return h if features is None else features(h[None])[0]
