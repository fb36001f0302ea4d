"""Autoregressive generation of waveforms, one sample per recurrent ``step``.

Dimension names: B batch (clips generated together), L length (samples), C classes.

Each generated sample costs one ``model.step`` on a cache of fixed size, so time and
memory per sample do not grow with the length generated; priming from a real clip feeds
its samples through the same step. Sampling goes through ``core.sample_logits``
(temperature, top-k, top-p) with a seeded generator: same seed, same clips.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mambaseq.core import sample_logits

from .io import save_audio


@dataclass
class GenerationResult:
    """Generated classes and how fast they came.

    tokens: (B, L_prime + n_samples) int64, the priming samples (if any) then the new ones.
    step_seconds: (n_samples,) wall time of each generation step (for the constant-time
        check: the last steps should be as fast as the first).
    prime_seconds: wall time of feeding the priming samples (0 without priming).
    """
    tokens: torch.Tensor
    n_prime: int
    step_seconds: torch.Tensor
    prime_seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        """Generated samples (all clips together) per second of generation."""
        return self.tokens.shape[0] * len(self.step_seconds) / float(self.step_seconds.sum())

    @property
    def samples_per_second_with_priming(self) -> float:
        """Samples stepped (priming and generated, all clips) per second of the whole run."""
        steps = self.n_prime + len(self.step_seconds)
        return self.tokens.shape[0] * steps / (float(self.step_seconds.sum())
                                               + self.prime_seconds)


@torch.no_grad()
def generate(model, n_clips: int, n_samples: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             prime: torch.Tensor | None = None, seed: int = 0, progress: bool = True
             ) -> GenerationResult:
    """Sample ``n_clips`` clips of ``n_samples`` new samples each.

    Args:
        model: an ``AudioLM`` (anything with ``allocate_cache(B)``, ``step(ids (B,), cache)
            -> logits (B, C)`` and ``quantizer``).
        n_clips (int): B.
        n_samples (int): samples generated per clip.
        temperature (float, 1.0): 0 = greedy.  top_k (int), top_p (float): filters.
        prime (Tensor, optional): (L_p,) or (B, L_p) classes fed before sampling; without
            it each clip starts from one silence sample (as after the silence at the start
            of a recording).
        seed (int, 0): seed of the sampling generator.
        progress (bool, True): one tqdm bar over priming and generation, with samples/s.

    Returns:
        GenerationResult.

    >>> res = generate(model, n_clips=4, n_samples=16000, top_p=0.95, seed=0)
    >>> res.tokens.shape, res.samples_per_second                  # (4, 16000), ...
    """
    device = next(model.parameters()).device
    primed = prime is not None
    if not primed:
        prime = torch.full((n_clips, 1), model.quantizer.silence, dtype=torch.long)
    prime = prime.long().to(device)
    if prime.dim() == 1:
        prime = prime.expand(n_clips, -1)
    if prime.shape[0] != n_clips or prime.shape[1] == 0:
        raise ValueError(f"prime must be (L,) or ({n_clips}, L) with L >= 1, "
                         f"got {tuple(prime.shape)}")
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    cache = model.allocate_cache(n_clips)
    n_prime = prime.shape[1] if primed else 0
    new = torch.empty(n_clips, n_samples, dtype=torch.long, device=device)
    seconds = torch.empty(n_samples, dtype=torch.float64)
    # one bar over priming and generation, all clips together (the batch steps as one)
    bar = tqdm(total=n_prime + n_samples, desc=f"{n_clips} clips", unit="step",
               disable=not progress, mininterval=1.0)
    start = time.perf_counter()
    for t in range(prime.shape[1]):
        logits = model.step(prime[:, t], cache)                            # (B, C)
        if primed:
            bar.update()
    prime_seconds = time.perf_counter() - start if primed else 0.0
    for t in range(n_samples):
        start = time.perf_counter()
        tok = sample_logits(logits, temperature, top_k, top_p, generator=gen)   # (B,)
        new[:, t] = tok
        if t + 1 < n_samples:
            logits = model.step(tok, cache)
        seconds[t] = time.perf_counter() - start
        bar.update()
        if t % 1000 == 999:
            bar.set_postfix_str(f"{n_clips * (t + 1) / float(seconds[:t + 1].sum()):.0f} samples/s")
    bar.close()
    model.train(was_training)
    kept = prime if primed else prime[:, :0]
    return GenerationResult(torch.cat([kept, new], 1).cpu(), kept.shape[1], seconds,
                            prime_seconds)


def save_clips(tokens: torch.Tensor, quantizer, sample_rate: int, out_dir,
               prefix: str = "sample") -> list[Path]:
    """Decode classes (B, L) and write ``out_dir/{prefix}_{i:03d}.wav`` (16-bit PCM)."""
    return [save_audio(Path(out_dir) / f"{prefix}_{i:03d}.wav", quantizer.decode(row),
                       sample_rate) for i, row in enumerate(tokens)]
