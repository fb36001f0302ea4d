"""Turning next-token logits into tokens: temperature, top-k and top-p (nucleus) sampling.

Dimension names: B batch, V vocabulary.
"""
from __future__ import annotations

import torch


def top_k_filter(logits, k):
    """Keep the ``k`` largest logits of each row, set the rest to -inf.

    Args:
        logits: (..., V).  k (int): 1 <= k; k >= V keeps everything.
    Ties at the k-th value are all kept.
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of most probable tokens
    whose probabilities sum to at least ``p``; the rest become -inf. The most probable token
    is always kept.

    Args:
        logits: (..., V).  p (float): 0 < p <= 1.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(-1)
    before = probs.cumsum(-1) - probs          # mass of the tokens ranked above each one
    drop_sorted = before >= p                  # already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Draw one token per row from (B, V) logits.

    Args:
        temperature (float, 1.0): logits are divided by it; 0 means greedy (argmax).
        top_k (int, optional), top_p (float, optional): filters applied after the
            temperature, top-k first.
        generator (torch.Generator, optional): for reproducible draws.

    Returns:
        (B,) long token ids.

    >>> tok = sample_logits(logits, temperature=0.8, top_p=0.95, generator=g)
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
