"""The bidirectional Mamba backbone, optionally reverse-complement equivariant (Caduceus).

Dimension names: B batch, L length, D d_model, W the width each mixer sees (D, or D/2
with ``rc_equivariant``).

A ``BiMamba`` mixer runs a forward-direction Mamba over the sequence and a second Mamba
over the reversed sequence, reverses its output back and adds the two (Schiff et al., 2024,
"Caduceus", ``BiMambaWrapper`` with ``bidirectional_strategy="add"``). The two directions
share ``in_proj`` and ``out_proj``, the bulk of the parameters, and keep their own conv,
x/dt projections, A and D.

Reverse-complement equivariance (Caduceus "RCPS", reverse-complement parameter sharing):
with ``rc_equivariant=True`` the D channels are two halves [a | b] and the reverse complement
of a hidden sequence h is RC(h) = h reversed along L *and* along channels, so RC swaps the
halves (and reverses each). Every layer applies one shared mixer f (width D/2) as

    a' = a + f(norm(a)),    b' = b + RC(f(norm(RC(b))))

which commutes with RC for any f. Given an RC-equivariant embedding (see
``core.heads.RCEmbedding``: token ids and their complements, the complement map coming from
the caller), the per-position output h satisfies h(RC x) = RC(h(x)), and the symmetrised
features a + flip_channels(b) are merely reversed along L, so mean or max pooling over them
is exactly RC-invariant.

Padding: with a ``mask`` the reversal is per sequence, within its own length (padding stays
at the end of every direction), so the real steps of a padded batch equal those of the
sequences alone.

Long inputs: without gradients and with L > ``chunk_size`` the stack runs layer by layer and
each direction chunk by chunk with state passing (the reverse direction walks the chunks
from the end). The whole residual stream of a layer is needed before its reverse pass can
start, so the cost is a few (B, L, D) fp32 buffers (residual, layer output, result), and
no (L, E, N) or per-layer (L, 2E) activations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .backbone import DEFAULT_CHUNK, Block, init_backbone_weights, lengths_from_mask
from .mamba import Mamba
from .model_folder import PretrainedMixin, register_model_class
from .norm import RMSNorm


class BiMamba(nn.Module):
    """Forward and reverse-direction Mamba sharing ``in_proj`` and ``out_proj``.

    ``fwd`` and ``rev`` are full ``Mamba`` blocks whose ``in_proj``/``out_proj`` are the same
    modules; ``parameters()`` counts them once, and checkpoints store them once.
    """

    def __init__(self, d_model, *, d_state=16, d_conv=4, expand=2, device=None, dtype=None):
        super().__init__()
        kw = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "device": device,
              "dtype": dtype}
        self.fwd = Mamba(d_model, **kw)
        self.rev = Mamba(d_model, **kw)
        self.rev.in_proj = self.fwd.in_proj   # shared (Caduceus: tied in/out projections)
        self.rev.out_proj = self.fwd.out_proj

    def forward(self, x, lengths=None):
        """x (B, L, W) -> fwd(x) + R(rev(R(x))), R reversing each sequence within its length."""
        return self.fwd(x) + reverse_within(self.rev(reverse_within(x, lengths)), lengths)


def _reverse_index(start, end, length, lengths, device):
    """Positions read at steps [start, end) of the per-sequence reversal: (B, end - start)."""
    t = torch.arange(start, end, device=device)[None, :]                 # (1, T)
    n = lengths[:, None]                                                  # (B, 1)
    return torch.where(t < n, n - 1 - t, t)


def reverse_within(x, lengths=None):
    """Reverse x (B, L, ...) along L, each row within its first ``lengths[b]`` steps (the rest,
    padding, stays in place). An involution."""
    if lengths is None:
        return x.flip(1)
    idx = _reverse_index(0, x.shape[1], x.shape[1], lengths, x.device)   # (B, L)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


def reverse_complement_hidden(h, lengths=None):
    """RC of a hidden sequence in the RC-equivariant layout: reversed along L (within each
    length) and along channels. An ``rc_equivariant`` ``BiMambaBackbone`` commutes with it."""
    return reverse_within(h, lengths).flip(-1)


@dataclass(kw_only=True)
class BiMambaBackboneConfig:
    """Architecture of a ``BiMambaBackbone`` (what its config.json holds)."""
    d_model: int                      # D (even when rc_equivariant: two halves of D/2)
    n_layer: int
    d_state: int = 16                 # N
    d_conv: int = 4                   # K
    expand: int = 2                   # E = expand * (mixer width)
    norm_eps: float = 1e-5
    chunk_size: int = DEFAULT_CHUNK   # steps per chunk of a gradient-free long forward
    rc_equivariant: bool = False      # Caduceus RCPS channel-split parameter sharing

    def __post_init__(self):
        if self.rc_equivariant and self.d_model % 2:
            raise ValueError(f"rc_equivariant needs an even d_model, got {self.d_model}")


@register_model_class
class BiMambaBackbone(PretrainedMixin, nn.Module):
    """Bidirectional residual pre-norm stack of BiMamba mixers: (B, L, D) -> (B, L, D).

    Args:
        config (BiMambaBackboneConfig): d_model (D), n_layer; d_state, d_conv, expand of
            each direction's Mamba; norm_eps, chunk_size as in ``MambaBackbone``;
            rc_equivariant: channel-split parameter sharing so that the stack commutes with
            ``reverse_complement_hidden`` (each mixer is D/2 wide and used twice, so the
            parameter count is that of a D/2 model).
        device, dtype (optional): where and in what dtype the parameters are made.

    ``grad_checkpoint`` (attribute, False; ``set_grad_checkpointing(model)`` sets it): as in
    ``MambaBackbone``, each layer's activations are recomputed in the backward pass.

    There is no ``step``: every output depends on the whole sequence.

    >>> bb = BiMambaBackbone(BiMambaBackboneConfig(d_model=32, n_layer=2, rc_equivariant=True))
    >>> x = torch.randn(2, 64, 32)
    >>> mask = torch.ones(2, 64, dtype=torch.bool); mask[1, 40:] = False   # row 1: 40 steps
    >>> bb(x, mask=mask).shape
    torch.Size([2, 64, 32])
    >>> rc = reverse_complement_hidden
    >>> torch.allclose(bb(rc(x)), rc(bb(x)), atol=1e-5)       # RC-equivariant
    True
    """

    config_class = BiMambaBackboneConfig

    def __init__(self, config: BiMambaBackboneConfig, *, device=None, dtype=None):
        super().__init__(config)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_layer = config.d_model, config.n_layer
        self.chunk_size = config.chunk_size
        self.rc_equivariant = config.rc_equivariant
        self.width = config.d_model // 2 if config.rc_equivariant else config.d_model
        self.layers = nn.ModuleList(
            Block(self.width, BiMamba(self.width, d_state=config.d_state, d_conv=config.d_conv,
                                      expand=config.expand, **factory),
                  norm_eps=config.norm_eps, **factory)
            for _ in range(config.n_layer))
        self.norm_f = RMSNorm(self.width, eps=config.norm_eps, **factory)
        self.grad_checkpoint = False           # per-layer activation checkpointing (training)
        init_backbone_weights(self, config.n_layer)

    def _terms(self, mixer):
        """(direction's Mamba, reversed?, channel half) of the sums that make a layer.

        half None: all channels. "a": channels [:W] as they are. "b": channels [W:] flipped
        on the way in and out; for "b" the directions swap, since RC(f(RC(b))) runs the
        forward Mamba over the reversed sequence and the reverse Mamba over b as it is.
        """
        if not self.rc_equivariant:
            return [(mixer.fwd, False, None), (mixer.rev, True, None)]
        return [(mixer.fwd, False, "a"), (mixer.rev, True, "a"),
                (mixer.fwd, True, "b"), (mixer.rev, False, "b")]

    def _channels(self, half):
        return {None: slice(None), "a": slice(0, self.width),
                "b": slice(self.width, 2 * self.width)}[half]

    def forward(self, x, mask=None):
        """x (B, L, D) -> y (B, L, D); ``mask`` (B, L), True on real steps, right-padded."""
        lengths = None if mask is None else lengths_from_mask(mask, x.shape[1])
        if torch.is_grad_enabled() or x.shape[1] <= self.chunk_size:
            return self._forward_whole(x, lengths)
        return self._forward_chunked(x, lengths)

    # -- whole sequence (differentiable) ------------------------------------------------
    def _forward_whole(self, x, lengths):
        residual = x.float()                                              # (B, L, D)
        recompute = self.grad_checkpoint and torch.is_grad_enabled()
        for blk in self.layers:
            if recompute:
                residual = checkpoint(self._layer, blk, residual, lengths, x.dtype,
                                      use_reentrant=False)
            else:
                residual = self._layer(blk, residual, lengths, x.dtype)
        return self._final_norm(residual).to(x.dtype)

    def _layer(self, blk, residual, lengths, dtype):
        """One residual layer: (B, L, D) fp32 residual -> the next one."""
        parts = {}
        for mamba, reverse, half in self._terms(blk.mixer):
            src = residual[..., self._channels(half)]
            if half == "b":
                src = src.flip(-1)
            if reverse:
                src = reverse_within(src, lengths)
            y = mamba(blk.mixer_input(src, dtype)).float()
            if reverse:
                y = reverse_within(y, lengths)
            if half == "b":
                y = y.flip(-1)
            parts[half] = y if half not in parts else parts[half] + y
        return residual + (torch.cat([parts["a"], parts["b"]], -1)
                           if self.rc_equivariant else parts[None])

    def _final_norm(self, residual):
        if not self.rc_equivariant:
            return self.norm_f(residual)
        a, b = residual.split(self.width, dim=-1)
        return torch.cat([self.norm_f(a), self.norm_f(b.flip(-1)).flip(-1)], -1)

    # -- chunked (no grad, bounded activations) -----------------------------------------
    @torch.no_grad()
    def _forward_chunked(self, x, lengths):
        batch, length, _ = x.shape
        chunk = self.chunk_size
        residual = x.float()
        if residual.data_ptr() == x.data_ptr():
            residual = residual.clone()
        out = torch.empty_like(residual)                                  # layer output
        for blk in self.layers:
            out.zero_()
            for mamba, reverse, half in self._terms(blk.mixer):
                src_all = residual[..., self._channels(half)]
                dst_all = out[..., self._channels(half)]
                state = None
                for start in range(0, length, chunk):
                    end = min(start + chunk, length)
                    # term-order steps [start, end) read these positions of the sequence
                    if not reverse:
                        src = src_all[:, start:end]
                    elif lengths is None:
                        src = src_all[:, length - end:length - start].flip(1)
                    else:
                        idx = _reverse_index(start, end, length, lengths, x.device)
                        idx = idx[..., None].expand(-1, -1, src_all.shape[-1])
                        src = src_all.gather(1, idx)
                    if half == "b":
                        src = src.flip(-1)
                    y, state = mamba(blk.mixer_input(src, x.dtype), state=state,
                                     return_state=True)
                    y = y.float()
                    if half == "b":
                        y = y.flip(-1)
                    if not reverse:
                        dst_all[:, start:end] += y
                    elif lengths is None:
                        dst_all[:, length - end:length - start] += y.flip(1)
                    else:
                        dst_all.scatter_add_(1, idx, y)
            residual += out
        for start in range(0, length, chunk):                             # final norm
            out[:, start:start + chunk] = self._final_norm(residual[:, start:start + chunk])
        del residual
        return out.to(x.dtype)
