"""Autoregressive generation of waveforms, one sample per recurrent ``step``.

Dimension names: B batch (clips generated together), L length (samples), C classes.

Each generated sample costs one ``model.step`` on a cache of fixed size, so time and
memory per sample do not grow with the length generated; priming from a real clip feeds
its samples through the same step. The loop is ``core.sampling.generate``, every causal
model's (temperature, top-k, top-p) with a seeded generator: same seed, same clips; this
module adds the clips' concerns: priming, the clock of every step, the progress bar, wav.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mambaseq.core.sampling import generate as generate_tokens

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

    >>> from mambaseq.mamba_audio import AudioLM
    >>> model = AudioLM.from_preset("tiny", sample_rate=8000)
    >>> res = generate(model, n_clips=2, n_samples=100, top_p=0.95, seed=0, progress=False)
    >>> res.tokens.shape, res.step_seconds.shape, res.samples_per_second > 0
    (torch.Size([2, 100]), torch.Size([100]), True)
    >>> again = generate(model, n_clips=2, n_samples=100, top_p=0.95, seed=0, progress=False)
    >>> torch.equal(again.tokens, res.tokens)                     # same seed, same clips
    True
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
    n_fed = prime.shape[1]                          # samples stepped before the first draw
    n_prime = n_fed if primed else 0
    seconds = torch.empty(n_samples, dtype=torch.float64)
    # one bar over priming and generation, all clips together (the batch steps as one)
    bar = tqdm(total=n_prime + n_samples, desc=f"{n_clips} clips", unit="step",
               disable=not progress, mininterval=1.0)
    clock = {"prime": 0.0}

    def on_step(pos):
        """Times each generated sample (its draw and its step; the bar's update is left
        out) and the priming as a whole."""
        now = time.perf_counter()
        if pos < n_fed:
            if primed:
                bar.update()
                if pos == n_fed - 1:
                    clock["prime"] = now - clock["start"]
        else:
            t = pos - n_fed
            seconds[t] = now - clock["last"]
            bar.update()
            if t % 1000 == 999:
                bar.set_postfix_str(f"{n_clips * (t + 1) / float(seconds[:t + 1].sum()):.0f} "
                                    "samples/s")
        clock["last"] = time.perf_counter()

    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    clock["start"] = time.perf_counter()
    tokens = generate_tokens(model, prime, n_samples, temperature, top_k, top_p,
                             generator=gen, prefill="step", on_step=on_step)
    bar.close()
    model.train(was_training)
    return GenerationResult(tokens[:, n_fed - n_prime:].cpu(), n_prime, seconds, clock["prime"])


def save_clips(tokens: torch.Tensor, quantizer, sample_rate: int, out_dir,
               prefix: str = "sample") -> list[Path]:
    """Decode classes (B, L) and write ``out_dir/{prefix}_{i:03d}.wav`` (16-bit PCM)."""
    return [save_audio(Path(out_dir) / f"{prefix}_{i:03d}.wav", quantizer.decode(row),
                       sample_rate) for i, row in enumerate(tokens)]


def stale_clips(out_dir, n_clips: int, prefix: str = "sample") -> list[Path]:
    """The files of ``out_dir`` named as ``save_clips`` names clip ``n_clips`` and later
    (``{prefix}_{i:03d}.wav``, i >= ``n_clips``): what an earlier, larger batch left there.
    Plain files only (no link, no folder), sorted."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d+)\.wav")
    found = []
    for path in Path(out_dir).iterdir():
        match = pattern.fullmatch(path.name)
        index = int(match[1]) if match else -1
        if (index >= n_clips and path.name == f"{prefix}_{index:03d}.wav"
                and path.is_file() and not path.is_symlink()):
            found.append(path)
    return sorted(found)
