"""Amplitude quantisers: waveform in [-1, 1] <-> integer classes in [0, 2**bits).

Mu-law (the default, 8 bits = 256 classes, as in WaveNet and SaShiMi) is
``torchaudio.functional.mu_law_encoding``/``mu_law_decoding``; linear is uniform rounding.
Shapes are elementwise: ``(...)`` float in, ``(...)`` int64 out, and back.

Error bound of a round trip (``decode(encode(x))`` against ``x`` clamped to [-1, 1]):
encoding rounds to the nearest of ``C = 2**bits`` levels spread over [-1, 1], so in the
quantiser's own domain (companded for mu-law) the error is at most half a step,
``1 / (C - 1)``. For mu-law that maps back to the waveform through the slope of the
expander, ``|dx/dy| = log1p(mu) * (1/mu + |x|)`` with ``mu = C - 1``: small near zero
(quiet samples are kept finely), about ``log1p(mu) / mu * 2`` times a linear step at full
scale. ``Quantizer.error_bound(x)`` returns that bound elementwise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torchaudio.functional as AF

KINDS = ("mu_law", "linear")


def mu_law_encode(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Waveform (...) in [-1, 1] (clamped) -> mu-law classes (...) int64 in [0, 2**bits).

    >>> mu_law_encode(torch.tensor([-1.0, 0.0, 1.0]))
    tensor([  0, 128, 255])
    """
    return AF.mu_law_encoding(x.float().clamp(-1.0, 1.0), 2 ** bits)


def mu_law_decode(q: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Mu-law classes (...) -> waveform (...) float32 in [-1, 1]."""
    return AF.mu_law_decoding(q, 2 ** bits).float()


def linear_encode(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Waveform (...) in [-1, 1] (clamped) -> uniform classes (...) int64 in [0, 2**bits)."""
    levels = 2 ** bits - 1
    return torch.round((x.float().clamp(-1.0, 1.0) + 1.0) * (levels / 2)).long()


def linear_decode(q: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Uniform classes (...) -> waveform (...) float32 in [-1, 1]."""
    levels = 2 ** bits - 1
    return q.float() * (2.0 / levels) - 1.0


@dataclass(frozen=True)
class Quantizer:
    """A quantiser's settings (saved beside a model's weights) with encode/decode.

    Args:
        kind (str, "mu_law"): "mu_law" or "linear".
        bits (int, 8): 2**bits classes.

    >>> qz = Quantizer()
    >>> q = qz.encode(torch.rand(2, 100) * 2 - 1)          # int64 in [0, 256)
    >>> q.shape, q.dtype, qz.n_classes
    (torch.Size([2, 100]), torch.int64, 256)
    >>> x = qz.decode(q); x.shape, x.dtype
    (torch.Size([2, 100]), torch.float32)
    >>> Quantizer("linear", bits=4).encode(torch.tensor([-1.0, 0.0, 1.0]))
    tensor([ 0,  8, 15])
    """
    kind: str = "mu_law"
    bits: int = 8

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown quantiser kind {self.kind!r}; expected one of {KINDS}")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"quantiser bits must be in [1, 16], got {self.bits}")

    @property
    def n_classes(self) -> int:
        return 2 ** self.bits

    @property
    def silence(self) -> int:
        """The class of a zero sample: what padding and an unprimed start are filled with."""
        return int(self.encode(torch.zeros(())))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform (...) -> classes (...) int64."""
        fn = mu_law_encode if self.kind == "mu_law" else linear_encode
        return fn(x, self.bits)

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        """Classes (...) -> waveform (...) float32."""
        fn = mu_law_decode if self.kind == "mu_law" else linear_decode
        return fn(q, self.bits)

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        """Largest ``|decode(encode(x)) - x|`` the quantiser allows at each x (...), for x
        in [-1, 1]; see the module docstring for the derivation."""
        half_step = 1.0 / (self.n_classes - 1)
        if self.kind == "linear":
            return torch.full_like(x.float(), half_step)
        mu = self.n_classes - 1
        # x = sign(y) * ((1 + mu)^|y| - 1) / mu  =>  dx/dy = log1p(mu) * (1/mu + |x|); the
        # slope grows with |x|, so evaluate it half a step further out.
        slope_at_edge = math.log1p(mu) * (1.0 / mu + x.float().abs().clamp(max=1.0))
        return half_step * slope_at_edge * math.exp(math.log1p(mu) * half_step)

    def to_dict(self) -> dict:
        return asdict(self)
