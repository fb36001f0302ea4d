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
    >>> n, round(bits / n, 6)                             # uniform over 256 classes: 8 bits
    (4, 8.0)
    >>> nll_bits(torch.zeros(1, 4, 256), torch.zeros(1, 4, dtype=torch.long),
    ...          mask=torch.tensor([[True, True, False, False]]))[1]
    2
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


def clip_stats(waveform: torch.Tensor, n_fft: int = 256, silence_db: float = -50.0) -> dict:
    """What a listener would notice first about a clip, as numbers.

    Args:
        waveform (Tensor): (L,) float samples in [-1, 1].
        n_fft (int, 256): frame of the spectral measures (hop n_fft / 4, Hann window;
            shortened to the clip's length for a clip under n_fft samples).
        silence_db (float, -50): frames quieter than this (dB re full scale) are silent.

    Returns:
        {"rms_db": RMS level in dBFS, "peak": max |x|, "clipped_fraction": share of samples
        in flat runs at full scale (|x| >= 0.999 with a neighbour of the same sign there too:
        a peak-normalised clip touches full scale once, a clipped one stays there),
        "silent_fraction": share of frames whose RMS is below ``silence_db``,
        "spectral_flatness": median over the non-silent frames of the geometric over the
        arithmetic mean of the power spectrum (about 0.5-0.6 for white noise with this
        estimator, near 0 for a tone; voiced speech sits in between, near the bottom)}.

    >>> clip_stats(torch.sin(torch.arange(8000) * 0.3))["spectral_flatness"] < 0.05
    True
    """
    x = waveform.double().reshape(-1)
    if x.numel() < 16:
        raise ValueError(f"clip_stats needs at least 16 samples, got {x.numel()}")
    n_fft = min(n_fft, 2 ** int(math.log2(x.numel())))        # a short clip: shorter frames
    if not torch.isfinite(x).all():
        raise ValueError("clip_stats: the waveform holds NaN or infinite samples")
    rms = float(x.pow(2).mean().sqrt())
    full = torch.where(x.abs() >= 0.999, torch.sign(x), torch.zeros_like(x))          # (L,)
    run = (full[1:] != 0) & (full[1:] == full[:-1])                                  # (L-1,)
    clipped = torch.zeros_like(full, dtype=torch.bool)
    clipped[1:] |= run
    clipped[:-1] |= run
    frames = x.unfold(0, n_fft, n_fft // 4)                                  # (T, n_fft)
    loud = 10 * torch.log10(frames.pow(2).mean(1) + 1e-20) > silence_db                # (T,)
    window = torch.hann_window(n_fft, dtype=x.dtype)
    power = torch.fft.rfft(frames * window).abs().pow(2)                                # (T, F)
    flat = torch.exp(torch.log(power + 1e-20).mean(1)) / (power.mean(1) + 1e-20)      # (T,)
    return {"rms_db": round(20 * math.log10(max(rms, 1e-10)), 2),
            "peak": round(float(x.abs().max()), 4),
            "clipped_fraction": round(float(clipped.double().mean()), 5),
            "silent_fraction": round(float((~loud).double().mean()), 4),
            "spectral_flatness": round(float(flat[loud].median()) if loud.any() else 0.0, 4)}


def median_stats(clips: list[torch.Tensor]) -> dict:
    """Median over ``clips`` ((L,) waveforms) of each ``clip_stats`` figure: the level,
    clipping, silence and noisiness of a batch at a glance."""
    rows = [clip_stats(c) for c in clips]
    return {k: round(float(torch.tensor([r[k] for r in rows]).median()), 5) for k in rows[0]}
