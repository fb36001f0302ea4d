"""Models with token inputs: the causal language model and the sequence classifier.

Dimension names: B batch, L length, D d_model, V vocabulary, C classes, F feature width
(D, or D/2 for the RC-symmetrised features of an RC-equivariant model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import DEFAULT_CHUNK, MambaBackbone, MambaBackboneConfig, lengths_from_mask
from .bimamba import BiMambaBackbone, BiMambaBackboneConfig, reverse_within
from .config import sub_config
from .model_folder import PretrainedMixin, register_model_class
from .sampling import generate

POOLINGS = ("mean", "last", "max")


def mean_log_probs(log_probs):
    """Log-probabilities (B, C) of several scorings of the same windows (a window and its
    reverse complement, or the members of an ensemble) -> their mean, renormalised (B, C):
    the normalised geometric mean of the probabilities."""
    return torch.stack(list(log_probs)).mean(0).log_softmax(-1)


def pool_hidden(h, mask=None, mode="mean"):
    """Pool (B, L, F) over the real steps of each row -> (B, F).

    Args:
        mask (B, L), optional: True on real steps (right-padded); all steps if None.
        mode (str, "mean"): "mean", "last" (the last real step) or "max".
    """
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    batch, length, _ = h.shape
    if mask is None:
        lengths = torch.full((batch,), length, device=h.device, dtype=torch.long)
        mask = torch.ones(batch, length, device=h.device, dtype=torch.bool)
    else:
        lengths = lengths_from_mask(mask, length)
        mask = mask.bool()
        if (lengths == 0).any():
            raise ValueError("pooling: a row of the mask has no real step")
    if mode == "last":
        return h[torch.arange(batch, device=h.device), lengths - 1]
    if mode == "max":
        return h.masked_fill(~mask[..., None], float("-inf")).amax(1)
    return (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)


class RCEmbedding(nn.Module):
    """Reverse-complement equivariant token embedding (Caduceus ``RCPSEmbedding``).

    emb(ids) = [E(ids) | flip_channels(E(complement[ids]))], E of width D/2, so that
    emb(RC(ids)) = reverse_complement_hidden(emb(ids)) with RC(ids) = complement[reversed ids].

    Args:
        vocab_size (int): V.  d_model (int): D, even.
        complement (sequence of int): complement[i] is the id of token i's complement; must
            be an involution of range(V) (specials map to themselves). Supplied by the caller
            (e.g. a nucleotide tokenizer): ``core`` knows nothing of DNA.
    """

    def __init__(self, vocab_size, d_model, complement, device=None, dtype=None):
        super().__init__()
        comp = torch.as_tensor(list(complement), dtype=torch.long)
        if comp.shape != (vocab_size,) or not torch.equal(comp.sort().values,
                                                           torch.arange(vocab_size)):
            raise ValueError(f"complement must be a permutation of range({vocab_size})")
        if not torch.equal(comp[comp], torch.arange(vocab_size)):
            raise ValueError("complement must be an involution (complement of complement = id)")
        if d_model % 2:
            raise ValueError(f"RCEmbedding needs an even d_model, got {d_model}")
        self.embedding = nn.Embedding(vocab_size, d_model // 2, device=device, dtype=dtype)
        self.register_buffer("complement", comp.to(device), persistent=False)

    def forward(self, ids):
        """ids (...,) -> (..., D)."""
        return torch.cat([self.embedding(ids), self.embedding(self.complement[ids]).flip(-1)], -1)

    def unembed(self, h):
        """The tied output head (Caduceus ``RCPSLMHead``): h (..., D) in the RC-equivariant
        layout [a | b] -> logits (..., V) = E a + complement-permuted(E flip(b)), so that
        the logits of RC(h) are those of h reversed along L with every token's score moved
        to its complement's."""
        half = self.embedding.weight.shape[1]
        return (F.linear(h[..., :half], self.embedding.weight)
                + F.linear(h[..., half:].flip(-1), self.embedding.weight)[..., self.complement])


def token_embedding(vocab_size, d_model, complement=None, device=None, dtype=None):
    """The input embedding of the token models: ``nn.Embedding`` (V, D), or with a token
    ``complement`` map the reverse-complement equivariant ``RCEmbedding``; normal(0, 0.02)
    init (mamba_ssm's initializer_range)."""
    if complement is None:
        emb = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        nn.init.normal_(emb.weight, std=0.02)
        return emb
    emb = RCEmbedding(vocab_size, d_model, complement, device=device, dtype=dtype)
    nn.init.normal_(emb.embedding.weight, std=0.02)
    return emb


class NgramEmbedding(nn.Module):
    """Token embedding plus an embedding of the n-gram of letters ending at each position.

    With letters A, C, G, T and n = 6 this gives a model the overlapping k-mer features a
    k-mer baseline reads (a mean-pooled linear head over it alone is that baseline), from the
    first layer on, while the backbone still sees every position. Position t's n-gram is
    made of tokens t-n+1 .. t only, so a causal model stays causal; an n-gram that reaches
    before the start or holds a non-letter token (N, padding, specials) maps to one shared
    "unknown" row.

    Args:
        vocab_size (int): V.  d_model (int): D.  n (int): n-gram length.
        letters (sequence of int): per token id, its letter index in [0, A) or -1 for a
            token that is not a letter; supplied by the caller (``core`` knows no alphabet).
    """

    def __init__(self, vocab_size, d_model, n, letters, device=None, dtype=None):
        super().__init__()
        letters = torch.as_tensor(list(letters), dtype=torch.long)
        if letters.shape != (vocab_size,) or letters.max() < 0:
            raise ValueError(f"letters must give one letter index (or -1) per token id of "
                             f"the {vocab_size}-token vocabulary")
        if n < 1:
            raise ValueError(f"n-gram length must be >= 1, got {n}")
        self.n, self.alphabet = n, int(letters.max()) + 1
        self.register_buffer("letters", letters.to(device), persistent=False)
        self.register_buffer("place", self.alphabet ** torch.arange(n - 1, -1, -1, device=device),
                             persistent=False)
        self.token = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        self.ngram = nn.Embedding(self.alphabet ** n + 1, d_model, device=device, dtype=dtype)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.ngram.weight, std=0.02)

    def ngram_ids(self, ids):
        """ids (B, L) -> (B, L) index of the n-gram ending at each position (A^n: unknown)."""
        x = F.pad(self.letters[ids], (self.n - 1, 0), value=-1)           # (B, L + n - 1)
        windows = x.unfold(-1, self.n, 1)                                  # (B, L, n)
        code = (windows.clamp(min=0) * self.place).sum(-1)                 # (B, L)
        return torch.where((windows >= 0).all(-1), code, self.alphabet ** self.n)

    def forward(self, ids):
        """ids (B, L) -> (B, L, D)."""
        return self.token(ids) + self.ngram(self.ngram_ids(ids))


@dataclass(kw_only=True)
class TokenModelConfig:
    """The fields every token model shares (the domain heads extend it)."""
    vocab_size: int                   # V
    d_model: int                      # D
    n_layer: int
    d_state: int = 16                 # N
    d_conv: int = 4                   # K
    expand: int = 2                   # E = expand * D
    norm_eps: float = 1e-5


@dataclass(kw_only=True)
class MambaLMConfig(TokenModelConfig):
    """Architecture of a ``MambaLM`` (what its config.json holds)."""
    chunk_size: int = DEFAULT_CHUNK
    dt_rank: Union[int, str] = "auto"  # R; "auto" = ceil(D / 16)
    conv_bias: bool = True
    bias: bool = False                # biases of in_proj and out_proj


@register_model_class
class MambaLM(PretrainedMixin, nn.Module):
    """Next-token language model: embedding -> causal ``MambaBackbone`` -> tied LM head.

    Args:
        config (MambaLMConfig): vocab_size (V), d_model (D), n_layer; d_state, d_conv,
            expand, norm_eps, chunk_size, dt_rank, conv_bias, bias as in
            ``MambaBackboneConfig``.
        device, dtype (optional): where and in what dtype the parameters are made.

    >>> lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=2))
    >>> ids = torch.randint(0, 16, (2, 32))
    >>> logits = lm(ids); logits.shape                              # (B, L, V)
    torch.Size([2, 32, 16])
    >>> cache = lm.allocate_cache(2); logits_t = lm.step(ids[:, 0], cache); logits_t.shape
    torch.Size([2, 16])
    >>> torch.allclose(logits_t, logits[:, 0], atol=1e-4)           # step = forward, causal
    True
    >>> g = torch.Generator().manual_seed(0)
    >>> lm.generate(ids[:, :5], 10, temperature=0.8, top_p=0.9, generator=g).shape
    torch.Size([2, 15])
    """

    config_class = MambaLMConfig

    def __init__(self, config: MambaLMConfig, *, device=None, dtype=None):
        super().__init__(config)
        self.embedding = token_embedding(config.vocab_size, config.d_model, device=device,
                                         dtype=dtype)
        self.backbone = MambaBackbone(sub_config(MambaBackboneConfig, config), device=device,
                                      dtype=dtype)

    def lm_head(self, h):
        """(..., D) -> (..., V) fp32 logits; the output matrix is the embedding (tied)."""
        return F.linear(h, self.embedding.weight).float()

    def forward(self, ids, state=None, return_state=False):
        """ids (B, L) -> logits (B, L, V); ``state``/``return_state`` as in the backbone
        (an ``InferenceCache``)."""
        h, state = self.backbone(self.embedding(ids), state=state, return_state=True)
        logits = self.lm_head(h)
        return (logits, state) if return_state else logits

    def embed(self, ids, mask=None, pooling=None):
        """Final hidden states: (B, L, D) per position, or (B, D) with ``pooling`` in
        "mean" / "last" / "max" over the real steps of ``mask``."""
        h = self.backbone(self.embedding(ids), mask=mask)
        return h if pooling is None else pool_hidden(h, mask, pooling)

    def allocate_cache(self, batch_size, device=None, dtype=None):
        """Zero recurrent state for ``step``: the backbone's ``InferenceCache``."""
        return self.backbone.allocate_cache(batch_size, device=device, dtype=dtype)

    def step(self, ids_t, cache):
        """One token per row: ids_t (B,) -> logits (B, V); ``cache`` is updated in place."""
        return self.lm_head(self.backbone.step(self.embedding(ids_t), cache))

    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 generator=None, lengths=None, mask=None, pad_id=0):
        """Continue each prompt of ``prompt_ids`` (B, L0) by ``max_new_tokens`` sampled tokens:
        ``core.sampling.generate`` of this model (see there), whose common prompt prefix
        is read by one parallel forward.

        Returns:
            (B, L0 + max_new_tokens) long.

        >>> lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=32, n_layer=2))
        >>> padded = torch.randint(1, 16, (2, 30)); padded[0, 12:] = 0   # prompts of 12, 30
        >>> out = lm.generate(padded, 5, temperature=0, lengths=torch.tensor([12, 30]))
        >>> out.shape
        torch.Size([2, 35])
        >>> alone = lm.generate(padded[:1, :12], 5, temperature=0)       # (1, 17)
        >>> torch.equal(out[0, :17], alone[0])              # row 0 as if generated alone
        True
        """
        return generate(self, prompt_ids, max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, generator=generator, lengths=lengths,
                        mask=mask, pad_id=pad_id)


@dataclass(kw_only=True)
class SequenceClassifierConfig:
    """Architecture and prediction rule of a ``SequenceClassifier`` (its config.json)."""
    vocab_size: int                   # V
    d_model: int                      # D
    n_layer: int
    num_classes: int                  # C
    pooling: str = "mean"             # "mean" | "last" | "max" over the real steps
    bidirectional: bool = False       # BiMambaBackbone instead of the causal MambaBackbone
    rc_equivariant: bool = False      # RC-equivariant embedding + backbone, invariant head
    complement: Optional[list] = None  # token id -> complement id (rc_equivariant only)
    d_state: int = 16                 # N
    d_conv: int = 4                   # K
    expand: int = 2
    norm_eps: float = 1e-5
    chunk_size: int = DEFAULT_CHUNK
    ngram: int = 0                    # > 0: add an NgramEmbedding of this n
    ngram_letters: Optional[list] = None  # token id -> letter index or -1 (ngram only)
    strand_average: bool = False      # log_probs: mean over a window and its RC (needs complement)

    def __post_init__(self):
        if self.strand_average and (self.rc_equivariant or self.complement is None):
            raise ValueError("strand_average needs the token complement map `complement` and "
                             "is redundant with rc_equivariant (already RC-invariant)")
        if self.ngram and (self.rc_equivariant or self.ngram_letters is None):
            raise ValueError("ngram needs ngram_letters and does not go with rc_equivariant")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.rc_equivariant:
            if not self.bidirectional:
                raise ValueError("rc_equivariant needs bidirectional=True")
            if self.complement is None:
                raise ValueError("rc_equivariant needs the token complement map `complement`")
            if self.pooling == "last":
                raise ValueError("pooling='last' is not RC-invariant; use 'mean' or 'max'")
        if self.complement is not None:
            self.complement = [int(c) for c in self.complement]
        if self.ngram_letters is not None:
            self.ngram_letters = [int(i) for i in self.ngram_letters]


@register_model_class
class SequenceClassifier(PretrainedMixin, nn.Module):
    """Embedding -> causal or bidirectional backbone -> pooling over a mask -> linear.

    Args:
        config (SequenceClassifierConfig):
            vocab_size, d_model, n_layer, num_classes (C).
            pooling ("mean"): "mean", "last" or "max" over the real steps.
            bidirectional (False): ``BiMambaBackbone`` rather than ``MambaBackbone``.
            rc_equivariant (False): needs ``bidirectional`` and ``complement``; the
                embedding and backbone are RC-equivariant and the head reads the symmetrised
                features h[:, :, :D/2] + flip(h[:, :, D/2:]) so that the logits are exactly
                RC-invariant ("last" is refused: RC moves the last step to the first).
            complement (list[int]): the complement of each token id.
            d_state, d_conv, expand, norm_eps, chunk_size: as in the backbones.
            ngram (0), ngram_letters (list[int]): with ngram > 0 the input embedding is an
                ``NgramEmbedding`` (token + n-gram of letters ending at each position); not
                with rc_equivariant.
            strand_average (False): ``log_probs`` averages the class log-probabilities of
                each window and of its reverse complement (for a model trained on both
                strands; needs ``complement``; an rc_equivariant model is RC-invariant
                already).
        device, dtype (optional): where and in what dtype the parameters are made.

    >>> clf = SequenceClassifier(SequenceClassifierConfig(
    ...     vocab_size=4, d_model=32, n_layer=2, num_classes=3, bidirectional=True,
    ...     rc_equivariant=True, complement=[3, 2, 1, 0]))   # token ids of A C G T
    >>> ids = torch.randint(0, 4, (2, 50))
    >>> mask = torch.ones(2, 50, dtype=torch.bool); mask[1, 30:] = False   # row 1: 30 steps
    >>> clf(ids, mask).shape                                         # (B, C)
    torch.Size([2, 3])
    >>> rc = (3 - ids).flip(-1)                                      # reverse complements
    >>> torch.allclose(clf(rc), clf(ids), atol=1e-5)                 # RC-invariant logits
    True
    """

    config_class = SequenceClassifierConfig

    def __init__(self, config: SequenceClassifierConfig, *, device=None, dtype=None):
        super().__init__(config)
        factory = {"device": device, "dtype": dtype}
        if config.strand_average:     # not saved with the weights: rebuilt from the config
            self.register_buffer("strand_complement",
                                 torch.tensor(config.complement, device=device),
                                 persistent=False)
        if config.ngram:
            self.embedding = NgramEmbedding(config.vocab_size, config.d_model, config.ngram,
                                            config.ngram_letters, **factory)
        else:
            self.embedding = token_embedding(
                config.vocab_size, config.d_model,
                config.complement if config.rc_equivariant else None, **factory)
        if config.bidirectional:
            self.backbone = BiMambaBackbone(sub_config(BiMambaBackboneConfig, config),
                                            **factory)
        else:
            self.backbone = MambaBackbone(sub_config(MambaBackboneConfig, config), **factory)
        self.feature_dim = config.d_model // 2 if config.rc_equivariant else config.d_model
        self.head = nn.Linear(self.feature_dim, config.num_classes, **factory)

    def hidden(self, ids, mask=None):
        """Per-position backbone output (B, L, D) (RC-equivariant when ``rc_equivariant``)."""
        return self.backbone(self.embedding(ids), mask=mask)

    def features(self, h):
        """(B, L, D) -> (B, L, F) features fed to pooling (RC-symmetrised if rc_equivariant)."""
        if not self.config.rc_equivariant:
            return h
        a, b = h.split(self.feature_dim, dim=-1)
        return a + b.flip(-1)

    def embed(self, ids, mask=None, pooling=None):
        """(B, L, D) per-position hidden states, or with ``pooling`` ("mean"/"last"/"max")
        the (B, F) pooled features the head reads."""
        h = self.hidden(ids, mask)
        return h if pooling is None else pool_hidden(self.features(h), mask, pooling)

    def forward(self, ids, mask=None):
        """ids (B, L), mask (B, L) True on real steps (right-padded) -> logits (B, C)."""
        return self.head(self.embed(ids, mask, pooling=self.config.pooling))

    def log_probs(self, ids, mask=None):
        """ids (B, L), mask (B, L) -> class log-probabilities (B, C): of the window as given,
        or with ``strand_average`` the renormalised mean of those of the window and of its
        reverse complement (each row reversed within its mask)."""
        logp = self(ids, mask).log_softmax(-1)
        if not self.config.strand_average:
            return logp
        lengths = None if mask is None else lengths_from_mask(mask, ids.shape[1])
        rc_ids = self.strand_complement[reverse_within(ids, lengths)]
        return mean_log_probs([logp, self(rc_ids, mask).log_softmax(-1)])
