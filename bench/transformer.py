"""A plain Transformer LM, the baseline the benchmarks compare Mamba with.

Dimension names: B batch, L length, D d_model, H heads, Dh head width, F MLP width, V vocab.

Pre-norm residual blocks (RMSNorm, as the Mamba backbone), rotary position embeddings
(RoPE, Su et al. 2021) on queries and keys, causal ``F.scaled_dot_product_attention``,
GELU MLP, tied embedding/LM head, and a preallocated KV cache for generation. Written for
the benchmark: no dropout, no biases in the attention, nothing a trainer would add.

``matched_transformer(mamba_lm)`` builds one with the same width and (within a few %) the
same parameter count as a given ``MambaLM``: about half as many layers (a Transformer layer
holds ~12 D^2 parameters, a Mamba layer ~6 D^2, as in the Mamba paper's comparisons), with the
MLP width F solved so that the totals match.

>>> tf = TransformerLM(vocab_size=16, d_model=32, n_layer=2, n_head=2, d_mlp=64)
>>> ids = torch.randint(0, 16, (2, 10))
>>> logits = tf(ids); logits.shape                                     # (B, L, V)
torch.Size([2, 10, 16])
>>> cache = tf.allocate_cache(2, max_len=64); _ = tf(ids[:, :-1], cache=cache)   # a prompt
>>> logits_t = tf.step(ids[:, -1], cache); logits_t.shape              # (B, V)
torch.Size([2, 16])
>>> torch.allclose(logits_t, logits[:, -1], atol=1e-4), cache.length
(True, 10)
>>> from mambaseq.core import MambaLM, MambaLMConfig
>>> lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=128, n_layer=4))
>>> base = matched_transformer(lm); len(base.layers)                   # half the layers
2
>>> abs(count_parameters(base) / count_parameters(lm) - 1) < 0.05      # as many parameters
True
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseq.core.norm import RMSNorm

__all__ = ["TransformerLM", "TransformerConfig", "KVCache", "matched_transformer",
           "count_parameters"]


def count_parameters(model):
    """Number of distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def rope_tables(length, d_head, base=10000.0, device=None):
    """cos, sin (L, Dh/2) of RoPE's rotation angles position * base^(-2i/Dh)."""
    inv_freq = base ** (-torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x (B, H, L, Dh) rotated pairwise (first half, second half) by cos, sin (L, Dh/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated: k, v (n_layer, B, H, max_len, Dh).

    ``length`` positions are filled; ``nbytes`` is the memory the cache holds.
    """
    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @property
    def max_len(self):
        return self.k.shape[3]

    @property
    def nbytes(self):
        return self.k.numel() * self.k.element_size() * 2


class Attention(nn.Module):
    def __init__(self, d_model, n_head, device=None, dtype=None):
        super().__init__()
        self.n_head, self.d_head = n_head, d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False, device=device, dtype=dtype)
        self.out = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)

    def forward(self, x, cos, sin, kv=None, start=0):
        """x (B, T, D) at positions start..start+T-1; ``kv`` = (k, v) cache tensors of this
        layer (B, H, max_len, Dh), written in place at those positions."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)            # (B, H, T, Dh)
        if kv is not None:
            kv[0][:, :, start:start + t] = k
            kv[1][:, :, start:start + t] = v
            k, v = kv[0][:, :, :start + t], kv[1][:, :, :start + t]
        if t == 1:
            y = F.scaled_dot_product_attention(q, k, v)            # one query sees all keys
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk after a prefix: query i sees keys up to start + i
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, d_model, n_head, d_mlp, norm_eps=1e-5, device=None, dtype=None):
        super().__init__()
        f = dict(device=device, dtype=dtype)
        self.norm1 = RMSNorm(d_model, norm_eps, **f)
        self.attn = Attention(d_model, n_head, **f)
        self.norm2 = RMSNorm(d_model, norm_eps, **f)
        self.fc1 = nn.Linear(d_model, d_mlp, **f)
        self.fc2 = nn.Linear(d_mlp, d_model, **f)

    def forward(self, x, cos, sin, kv=None, start=0):
        x = x + self.attn(self.norm1(x), cos, sin, kv, start)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


@dataclass
class TransformerConfig:
    vocab_size: int                   # V
    d_model: int                      # D
    n_layer: int
    n_head: int                       # H; Dh = D / H
    d_mlp: int                        # F, GELU MLP width
    norm_eps: float = 1e-5


class TransformerLM(nn.Module):
    """Embedding -> pre-norm (RoPE attention + GELU MLP) blocks -> RMSNorm -> tied head.

    Args:
        vocab_size (int), d_model (int), n_layer (int), n_head (int), d_mlp (int).
        norm_eps (float, 1e-5).
    """

    def __init__(self, vocab_size, d_model, n_layer, n_head, d_mlp, norm_eps=1e-5,
                 device=None, dtype=None):
        super().__init__()
        if d_model % n_head or (d_model // n_head) % 2:
            raise ValueError(f"d_model {d_model} must split into {n_head} heads of even width")
        self.config = TransformerConfig(vocab_size, d_model, n_layer, n_head, d_mlp, norm_eps)
        f = dict(device=device, dtype=dtype)
        self.embedding = nn.Embedding(vocab_size, d_model, **f)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(TransformerBlock(d_model, n_head, d_mlp, norm_eps, **f)
                                    for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model, norm_eps, **f)
        self._rope = (0, None, None)

    def rope(self, length, device):
        """cos, sin tables for positions 0..length-1, grown by doubling and kept."""
        if self._rope[0] < length or self._rope[1].device != device:
            n = max(length, 2 * self._rope[0])
            self._rope = (n, *rope_tables(n, self.config.d_model // self.config.n_head, device=device))
        return self._rope[1][:length], self._rope[2][:length]

    def allocate_cache(self, batch_size, max_len, device=None, dtype=None):
        """Empty KV cache for ``max_len`` positions."""
        c = self.config
        w = self.embedding.weight
        shape = (c.n_layer, batch_size, c.n_head, max_len, c.d_model // c.n_head)
        return KVCache(k=torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype),
                       v=torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype))

    def forward(self, ids, cache=None):
        """ids (B, T) -> logits (B, T, V) fp32. With ``cache`` the tokens continue at
        position ``cache.length``, their keys/values are stored and ``length`` advances."""
        t = ids.shape[1]
        start = 0 if cache is None else cache.length
        if cache is not None and start + t > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {start + t} needed")
        cos, sin = self.rope(start + t, ids.device)
        cos, sin = cos[start:], sin[start:]
        x = self.embedding(ids)
        for i, blk in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x = blk(x, cos, sin, kv, start)
        if cache is not None:
            cache.length = start + t
        return F.linear(self.norm_f(x), self.embedding.weight).float()

    def step(self, ids_t, cache):
        """One token per row: ids_t (B,) -> logits (B, V), read and written at the cache.

        The decoding path written with the care ``Mamba.step`` gets: no (B, 1, ...) detour
        through ``forward``, fused ATen ops (``F.rms_norm``, one qkv projection, the
        rotation applied to q and k at once, ``scaled_dot_product_attention`` on views of
        the preallocated cache), nothing allocated that grows with the context.
        """
        c = self.config
        pos = cache.length
        if pos + 1 > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {pos + 1} needed")
        batch, d_head = ids_t.shape[0], c.d_model // c.n_head
        cos, sin = self.rope(pos + 1, ids_t.device)
        cos, sin = cos[pos], sin[pos]                                      # (Dh/2,)
        x = self.embedding(ids_t)                                          # (B, D)
        for i, blk in enumerate(self.layers):
            h = F.rms_norm(x, (c.d_model,), blk.norm1.weight, blk.norm1.eps)
            qk, v = F.linear(h, blk.attn.qkv.weight).view(batch, 3, c.n_head, d_head) \
                .split([2, 1], dim=1)                                      # (B, 2|1, H, Dh)
            a, b = qk.chunk(2, dim=-1)
            qk = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)  # RoPE on q and k
            cache.k[i, :, :, pos] = qk[:, 1]
            cache.v[i, :, :, pos] = v[:, 0]
            y = F.scaled_dot_product_attention(qk[:, 0, :, None], cache.k[i, :, :, :pos + 1],
                                               cache.v[i, :, :, :pos + 1])  # (B, H, 1, Dh)
            x = x + F.linear(y.view(batch, c.d_model), blk.attn.out.weight)
            h = F.rms_norm(x, (c.d_model,), blk.norm2.weight, blk.norm2.eps)
            x = x + blk.fc2(F.gelu(blk.fc1(h)))
        cache.length = pos + 1
        h = F.rms_norm(x, (c.d_model,), self.norm_f.weight, self.norm_f.eps)
        return F.linear(h, self.embedding.weight).float()


def matched_transformer(mamba_lm, d_head=64, device=None, dtype=None):
    """A ``TransformerLM`` with the width, vocabulary and (within a few %) the parameter
    count of ``mamba_lm``: n_layer = round(Mamba layers / 2) (>= 1), H = D / d_head, and the
    MLP width F solved for the remaining parameters (rounded to a multiple of 8)."""
    cfg = mamba_lm.config
    d, v = cfg.d_model, cfg.vocab_size
    target = count_parameters(mamba_lm)
    n_layer = max(1, round(cfg.n_layer / 2))
    n_head = max(1, d // d_head)
    # Per layer: attention 4 D^2, two norms 2 D, MLP 2 D F + F + D; plus embedding V D, norm D.
    rest = target - v * d - d - n_layer * (4 * d * d + 3 * d)
    d_mlp = max(8, int(round(rest / n_layer / (2 * d + 1) / 8)) * 8)
    return TransformerLM(v, d, n_layer, n_head, d_mlp, cfg.norm_eps, device=device, dtype=dtype)
