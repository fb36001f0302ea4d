"""Negative log-likelihood in bits per sample, and the Markov baseline it is judged against.

Dimension names: B batch, L length, C classes. 8 bits/sample is what a uniform guess over
256 mu-law classes costs; a model is worth something only below a Markov model over the
same classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nll_bits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
             ) -> tuple[float, int]:
    """Summed negative log2-likelihood of ``targets`` and how many samples it covers, so that
    chunks and batches add up exactly.

    Args:
        logits (Tensor): (..., C) unnormalised scores.
        targets (Tensor): (...) int64 classes.
        mask (Tensor or None, None): (...) bool, True where a target counts.

    Returns:
        (total bits, number of samples counted).

    >>> bits, n = nll_bits(torch.zeros(1, 4, 256), torch.zeros(1, 4, dtype=torch.long))
    >>> bits / n                                          # uniform over 256 classes: 8.0
    """
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           reduction="none")                             # (B * L,)
    if mask is not None:
        keep = mask.reshape(-1)
        nats, count = nats[keep], int(keep.sum())
    else:
        count = nats.numel()
    return float(nats.double().sum()) / math.log(2), count


def markov_bits_per_sample(train: list[torch.Tensor], test: list[torch.Tensor],
                           order: int = 1, n_classes: int = 256, alpha: float = 0.5) -> float:
    """Bits per sample on ``test`` of an order-``order`` Markov chain over classes fitted on
    ``train`` with add-``alpha`` smoothing; each clip's first ``order`` samples are not
    scored. ``order`` 0 is the class histogram.

    Args:
        train, test (lists of Tensor): clips of classes, each (L_i,) integer.
        order (int, 1): context length, 0 to 2 (a table of ``n_classes ** (order + 1)``).
        n_classes (int, 256): C.
        alpha (float, 0.5): pseudo-count per (context, next) pair.
    """
    if not 0 <= order <= 2:
        raise ValueError(f"Markov order must be 0, 1 or 2, got {order}")

    def codes(clips):
        """Index context * C + next of every scored position, all clips concatenated."""
        out = []
        for clip in clips:
            clip = clip.long()
            if len(clip) <= order:
                continue
            idx = torch.zeros(len(clip) - order, dtype=torch.long)
            for k in range(order + 1):
                idx = idx * n_classes + clip[k:len(clip) - order + k]
            out.append(idx)
        return torch.cat(out)

    size = n_classes ** (order + 1)
    counts = torch.bincount(codes(train), minlength=size).double().view(-1, n_classes)
    logp = (counts + alpha).log() - (counts.sum(1, keepdim=True) + alpha * n_classes).log()
    test_codes = codes(test)
    return float(-logp.view(-1)[test_codes].sum()) / math.log(2) / len(test_codes)
