"""The causal Mamba backbone: a residual, pre-norm stack of Mamba blocks.

Dimension names: B batch, L length, D d_model, E d_inner.

    x (B, L, D) -> residual r = x (fp32)
    for each layer:  r = r + Mamba(RMSNorm(r))          (residual kept in fp32)
    y = RMSNorm_f(r)                                     (B, L, D)

Without gradients, a sequence longer than ``chunk_size`` is processed chunk by chunk with
the recurrent state passed between chunks, so a million-step ``backbone(x)`` under
``torch.no_grad()`` holds only one chunk's activations besides its input and output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .cache import InferenceCache
from .mamba import Mamba
from .model_folder import PretrainedMixin, register_model_class
from .norm import RMSNorm

DEFAULT_CHUNK = 2 ** 14


class Block(nn.Module):
    """Pre-norm residual block around a mixer: ``residual + mixer(norm(residual))``.

    The residual stream stays in fp32 whatever the mixer's dtype (as mamba_ssm's
    ``residual_in_fp32``): in bf16 a million small updates would otherwise round away.
    """

    def __init__(self, d_model, mixer, *, norm_eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        self.mixer = mixer

    def mixer_input(self, residual, dtype):
        """(..., D) fp32 residual -> normalised mixer input in the mixer's dtype."""
        return self.norm(residual).to(dtype)

    def step(self, residual, cache):
        """One step: residual (B, D) fp32 -> residual + mixer(norm(residual)), the sum
        written into ``residual`` where the mixer's step fuses it (pass a tensor you own)."""
        return self.mixer.step(residual, cache, pre_norm=self.norm, add_residual=True)


def _block_forward(blk, residual, state, dtype):
    """One residual block: (B, L, D) fp32 residual -> (new residual, the mixer's new state)."""
    h, new_state = blk.mixer(blk.mixer_input(residual, dtype), state=state, return_state=True)
    return residual + h.float(), new_state


def set_grad_checkpointing(model, enabled=True):
    """Turn per-block activation checkpointing on or off in every backbone of ``model`` that
    supports it (those with a ``grad_checkpoint`` attribute); returns how many it set."""
    found = [m for m in model.modules() if hasattr(m, "grad_checkpoint")]
    for m in found:
        m.grad_checkpoint = bool(enabled)
    return len(found)


def init_backbone_weights(module, n_layer):
    """mamba_ssm's ``_init_weights``: zero Linear biases (except dt_proj's, flagged
    ``_no_reinit``) and scale every ``out_proj`` by 1/sqrt(n_layer), so that the variance of
    the residual stream does not grow with depth (GPT-2's scaled residual init)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            if sub.bias is not None and not getattr(sub.bias, "_no_reinit", False):
                nn.init.zeros_(sub.bias)
            if name.endswith("out_proj"):
                nn.init.kaiming_uniform_(sub.weight, a=math.sqrt(5))
                with torch.no_grad():
                    sub.weight /= math.sqrt(n_layer)


def lengths_from_mask(mask, length=None):
    """(B, L) bool/0-1 padding mask, True on real steps -> lengths (B,) long.

    Only right padding is accepted (each row is ones then zeros): with left padding a causal
    model would read the padding first. Raises ValueError naming the first bad row.
    """
    mask = mask.bool()
    if length is not None and mask.shape[-1] != length:
        raise ValueError(f"mask has length {mask.shape[-1]}, the input {length}")
    lengths = mask.sum(-1)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    expected = positions[None, :] < lengths[:, None]
    bad = (expected != mask).any(-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(f"mask row {row} is not right-padded (ones then zeros); "
                         "pad sequences at the end")
    return lengths


@dataclass(kw_only=True)
class MambaBackboneConfig:
    """Architecture of a ``MambaBackbone`` (what its config.json holds)."""
    d_model: int                      # D
    n_layer: int                      # number of residual Mamba blocks
    d_state: int = 16                 # N
    d_conv: int = 4                   # K, causal conv width
    expand: int = 2                   # E = expand * D
    norm_eps: float = 1e-5
    chunk_size: int = DEFAULT_CHUNK   # steps per chunk of a gradient-free long forward
    dt_rank: Union[int, str] = "auto"  # R, rank of dt_proj; "auto" = ceil(D / 16)
    conv_bias: bool = True            # bias of the depthwise conv1d
    bias: bool = False                # biases of in_proj and out_proj


@register_model_class
class MambaBackbone(PretrainedMixin, nn.Module):
    """Causal residual pre-norm stack of Mamba blocks: (B, L, D) -> (B, L, D).

    Args:
        config (MambaBackboneConfig): d_model (D), n_layer; d_state, d_conv, expand, dt_rank,
            conv_bias and bias of each ``Mamba`` (published checkpoints set the last three;
            see ``core.hub``); norm_eps of the RMSNorms; chunk_size: with gradients off,
            inputs longer than this are processed in chunks of this many steps that pass
            state (bounded memory at any length).
        device, dtype (optional): where and in what dtype the parameters are made.

    ``grad_checkpoint`` (attribute, False; ``set_grad_checkpointing(model)`` sets it): with
    gradients on, each block's activations are recomputed in the backward pass
    (``torch.utils.checkpoint``) instead of stored, so training memory holds one block's
    activations plus the (B, L, D) residual of every block.

    The recurrent state is an ``InferenceCache`` whose ``layers`` hold each block's cache.

    >>> bb = MambaBackbone(MambaBackboneConfig(d_model=32, n_layer=2))
    >>> x = torch.randn(2, 100, 32)
    >>> y = bb(x); y.shape
    torch.Size([2, 100, 32])
    >>> y1, st = bb(x[:, :60], return_state=True); y2 = bb(x[:, 60:], state=st)
    >>> torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-5)   # the second chunk continues
    True
    >>> cache = bb.allocate_cache(2); y_t = bb.step(x[:, 0], cache); y_t.shape
    torch.Size([2, 32])
    >>> torch.allclose(y_t, y[:, 0], atol=1e-5)
    True
    """

    config_class = MambaBackboneConfig

    def __init__(self, config: MambaBackboneConfig, *, device=None, dtype=None):
        super().__init__(config)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_layer = config.d_model, config.n_layer
        self.chunk_size = config.chunk_size
        self.grad_checkpoint = False
        self.layers = nn.ModuleList(
            Block(config.d_model,
                  Mamba(config.d_model, d_state=config.d_state, d_conv=config.d_conv,
                        expand=config.expand, dt_rank=config.dt_rank,
                        conv_bias=config.conv_bias, bias=config.bias, **factory),
                  norm_eps=config.norm_eps, **factory)
            for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps, **factory)
        init_backbone_weights(self, config.n_layer)

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero recurrent state: ``InferenceCache(layers=[one Mamba cache per block])``."""
        return InferenceCache(layers=[blk.mixer.allocate_cache(batch_size, device=device,
                                                               dtype=dtype)
                                      for blk in self.layers])

    def forward(self, x, state=None, return_state=False, mask=None):
        """x (B, L, D) -> y (B, L, D), causal.

        Args:
            state (InferenceCache, optional): continue from a previous chunk's state (or
                a cache ``step`` left); it is not modified.
            return_state (bool, False): also return the state after the last step (a new
                ``InferenceCache``, which ``step`` can continue from).
            mask (B, L), optional: padding mask, True on real steps. It must be
                right-padded; being causal, the stack then needs nothing more for the real
                steps to match those of the unpadded sequence (padded steps are not zeroed).
        """
        if mask is not None:
            lengths_from_mask(mask, x.shape[1])
        length = x.shape[1]
        if torch.is_grad_enabled() or length <= self.chunk_size:
            y, state = self._forward_whole(x, state)
        else:
            y = torch.empty_like(x)
            for start in range(0, length, self.chunk_size):
                end = min(start + self.chunk_size, length)
                y[:, start:end], state = self._forward_whole(x[:, start:end], state)
        return (y, state) if return_state else y

    def _forward_whole(self, x, state):
        """All layers over x (B, L, D) at once; returns y and the new state."""
        residual = x.float()                                              # (B, L, D)
        recompute = self.grad_checkpoint and torch.is_grad_enabled()
        new_state = []
        for i, blk in enumerate(self.layers):
            layer_state = None if state is None else state.layers[i]
            if recompute:
                residual, s = checkpoint(_block_forward, blk, residual, layer_state, x.dtype,
                                         use_reentrant=False)
            else:
                residual, s = _block_forward(blk, residual, layer_state, x.dtype)
            new_state.append(s)
        return self.norm_f(residual).to(x.dtype), InferenceCache(layers=new_state)

    def step(self, x_t, cache):
        """One step: x_t (B, D) -> y_t (B, D); ``cache`` (from ``allocate_cache`` or a
        returned state) is updated in place."""
        residual = x_t.to(torch.float32, copy=True)       # the blocks add into it in place
        for blk, layer_cache in zip(self.layers, cache.layers):
            residual = blk.step(residual, layer_cache)
        return self.norm_f(residual).to(x_t.dtype)

